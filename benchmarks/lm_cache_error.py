"""How far a top-k teacher cache's losses are from the live full-vocabulary ones.

For a trained teacher and student (``hf:`` folders, e.g. from ``lm_fortunes.py``) and the
validation rows of the same run, prints per k the bytes a token the cache stores and each
divergence computed from the cached (float16, top-k + tail) teacher against the live
teacher's full distribution.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/lm_cache_error.py \
        --teacher runs/lm-fortunes/teacher/student --student runs/lm-fortunes/ce-s0/student
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from kdistill.cache.tokens import LMCachedTeacher, write_lm_cache
from kdistill.config import load_config
from kdistill.lm import build_causal_lm, load_tokenizer
from kdistill.methods._token import token_loss
from kdistill.tasks.causal_lm.run import load_data
from kdistill.teachers import TeacherOutput

KINDS = ("forward_kl", "reverse_kl", "jsd")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--student", type=Path, required=True)
    ap.add_argument("--ks", default="8,32,128,257")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cfg = load_config(args.student.parent / "config.yaml")
    tok = load_tokenizer(f"hf:{args.teacher}")
    _, val = load_data(cfg, tok)
    teacher, _ = build_causal_lm(f"hf:{args.teacher}", {}, tok.vocab_size)
    student, _ = build_causal_lm(f"hf:{args.student}", {}, tok.vocab_size)
    teacher.eval()
    student.eval()
    batch = val.take(torch.arange(len(val)))
    with torch.no_grad():
        zs, zt = student(batch["x"]), teacher(batch["x"])
    live = {k: float(token_loss(k, zs, TeacherOutput(zt), batch["y"])) for k in KINDS}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in [int(v) for v in args.ks.split(",")]:
            meta = write_lm_cache(teacher, val, tok, k, Path(tmp) / f"k{k}", log=lambda s: None)
            cached = LMCachedTeacher(Path(tmp) / f"k{k}", val)(batch)
            got = {kind: float(token_loss(kind, zs, cached, batch["y"])) for kind in KINDS}
            rows.append({"k": k, "bytes_per_token": meta["bytes_per_token"], **{f"{kind}_cached": v for kind, v in got.items()}})
    print(f"live (full vocabulary, {tok.vocab_size} tokens, {4 * tok.vocab_size} bytes/token as float32 logits): "
          + ", ".join(f"{k} {v:.4f}" for k, v in live.items()))
    for r in rows:
        print(f"k={r['k']:4d} {r['bytes_per_token']:5d} bytes/token: "
              + ", ".join(f"{kind} {r[kind + '_cached']:.4f} ({r[kind + '_cached'] - live[kind]:+.4f})" for kind in KINDS))
    if args.out:
        args.out.write_text(json.dumps({"live": live, "rows": rows, "val_tokens": val.targets()}, indent=2))


if __name__ == "__main__":
    main()
