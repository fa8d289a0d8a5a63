"""Publish a trained timm model the way timm's hub does: ``OUT/model.safetensors`` and
``OUT/config.json`` holding its card (``pretrained_cfg``), which ``teacher.input: auto``
reads beside the weights file.

    python examples/timm_publish_teacher.py RUN OUT

``RUN`` is a kdistill run folder whose student is ``timm:NAME`` (examples/timm_teacher.yaml).
The card is timm's own ``pretrained_cfg`` for NAME with the input size, mean and std the
run trained at (its data section), and ``crop_pct`` = size / resize (the folder's decode).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import timm
import yaml


def main(run: Path, out: Path) -> None:
    record = json.loads((run / "model.json").read_text())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    name, opts = record["model"], cfg["data"]["options"]
    if not name.startswith("timm:"):
        raise SystemExit(f"error: {run} holds {name!r}, not a timm: model")
    size = int(opts["size"])
    card = timm.get_pretrained_cfg(name[5:]).to_dict()
    card.update(input_size=[int(record["input_shape"][0]), size, size], num_classes=record["num_classes"],
                crop_pct=size / int(opts.get("resize") or round(size / 0.875)))
    if opts.get("mean") != "imagenet":
        card.update(mean=opts["mean"], std=opts["std"])
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "model.safetensors", out / "model.safetensors")
    (out / "config.json").write_text(json.dumps({"architecture": name[5:], "num_classes": record["num_classes"],
                                                 "pretrained_cfg": card}, indent=2))
    print(f"{out / 'model.safetensors'} + {out / 'config.json'}: input {card['input_size']}, "
          f"mean {card['mean']}, crop_pct {card['crop_pct']:.3f}, {card['interpolation']}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
