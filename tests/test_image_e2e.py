"""End to end on generated image folders: the cloud-to-edge example at toy size, and an
exact resume of a streamed, recipe-augmented run after a crash mid-epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_image_sources import make_images, write_folder

from kdistill.config import load_config
from kdistill.runs import run_experiment

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def photos(tmp_path):
    x, y = make_images((8, 8, 8), hw=(20, 24))
    xt, yt = make_images((3, 3, 3), hw=(24, 20), seed=1)
    write_folder(tmp_path / "photos", x, y, "train", ext="jpg")
    write_folder(tmp_path / "photos", xt, yt, "test", ext="png")
    return tmp_path / "photos"


def test_cloud_to_edge_example_runs_at_toy_size(photos, tmp_path):
    cfg = load_config(EXAMPLES / "cloud_to_edge.yaml", [
        f"data.root={photos}", "data.options.size=16", "data.options.resize=18", "data.batch_size=8",
        "data.eval_batch_size=16", "data.workers=0", "teacher.kwargs={width: 4}", "teacher.train.epochs=1",
        "student.kwargs={width_mult: 0.25}", "train.epochs=1", "train.warmup_epochs=0", "train.progress=false",
        "train.device=cpu", f"output.dir={tmp_path / 'runs'}"])
    res = run_experiment(cfg, log=lambda s: None)
    saved = json.loads((Path(res["run_dir"]) / "results.json").read_text())
    assert saved["dataset"]["train"] == 24 and saved["dataset"]["num_classes"] == 3
    assert saved["teacher"]["model"] == "resnet50" and saved["student"]["model"] == "mobilenetv2_imagenet"
    assert saved["steps"] == 3 and 0.0 <= saved["final"]["test"]["acc"] <= 1.0
    rows = [json.loads(r) for r in (Path(res["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert torch.isfinite(torch.tensor(rows[-1]["train_loss_ce"]))  # CE on Mixup/CutMix soft labels
    assert 0.0 <= rows[-1]["data_wait_fraction"] <= 1.0


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / "model.safetensors"))


def test_streamed_run_resumed_after_a_crash_is_bit_identical(photos, tmp_path, crash_at_batch):
    over = ["data.name=imagefolder", f"data.root={photos}", "data.options={size: 16, resize: 20, mean: imagenet}", "data.resident=false",
            "data.workers=1", "data.batch_size=6", "data.recipe={random_resized_crop: true, flip: 0.5, "
            "color_jitter: true, mixup: 0.2, cutmix: 1.0}", "method={name: ce}", "train.epochs=2",
            "train.checkpoint_every=1", "train.deterministic=true", "train.progress=false", "train.device=cpu",
            "train.lr=0.01"]
    base = {"student": {"model": "mobilenetv2_imagenet", "kwargs": {"width_mult": 0.25}}}
    cfg = load_config(None, over, base=base)
    straight = run_experiment(cfg, run_dir=tmp_path / "a", log=lambda s: None)

    # batch 2 of epoch 2 (4 batches an epoch): a checkpoint holds step 6
    crash_at_batch(7, lambda: run_experiment(cfg, run_dir=tmp_path / "b", log=lambda s: None))
    resumed = run_experiment(cfg, run_dir=tmp_path / "b", resume=True, log=lambda s: None)
    assert resumed["steps"] == straight["steps"] == 8
    a, b = _weights(straight["run_dir"]), _weights(resumed["run_dir"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
