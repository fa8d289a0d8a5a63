"""Distil a byte-level causal LM on Debian's fortune files (apt: fortunes-min).

A 4-layer Llama-style teacher is trained once on the corpus (cross-entropy), then a 1-layer
student is trained with each objective over several seeds: alone (cross-entropy), forward
KL with the live teacher, and forward KL, reverse KL and GKD's JSD (beta 0.5) reading the
teacher from one shared top-k cache (``--cache-k``, tail bin for the rest), each by the
same `kdistill.lm` runs `kdistill train` makes (through `kdistill.lm.suite`, as `kdistill demo --lm`). Prints and writes a JSON of validation perplexities (mean ± sample std over seeds).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/lm_fortunes.py --out runs/lm-fortunes \
        --seeds 0,1 --epochs 10 --teacher-epochs 15
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from kdistill.lm.suite import FORTUNES, fortunes_min, llama, train_student, train_teacher

STUDENT = llama(1, 64)  # 74,048
# (method, read the teacher from the shared top-k cache?)
METHODS = {
    "alone (ce)": ({"name": "ce"}, False),
    "forward_kl (cache)": ({"name": "forward_kl"}, True),
    "reverse_kl (cache)": ({"name": "reverse_kl"}, True),
    "gkd (jsd, beta 0.5, cache)": ({"name": "gkd", "beta": 0.5}, True),
    "forward_kl (live)": ({"name": "forward_kl"}, False),
    "reverse_kl (live)": ({"name": "reverse_kl"}, False),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=None, help="default: fortunes-min's three files, copied into OUT/corpus")
    ap.add_argument("--out", type=Path, default=Path("runs/lm-fortunes"))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--teacher-epochs", type=int, default=20)
    ap.add_argument("--methods", default=";".join(METHODS))
    ap.add_argument("--cache-k", type=int, default=32)
    ap.add_argument("--teacher-layers", type=int, default=4, help="the teacher's blocks (width 128)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    quiet = lambda line: print(line, flush=True)
    t0 = time.perf_counter()
    # the folder may also hold the larger `fortunes` package's files: take fortunes-min's only
    corpus = args.corpus or fortunes_min(args.out / "corpus", FORTUNES)
    t_res = train_teacher(corpus, args.out, llama(args.teacher_layers, 128), args.teacher_epochs, 0, log=quiet)  # continues an interrupted one
    rows: dict[str, list[dict]] = {}
    for name in args.methods.split(";"):
        method, cached = METHODS[name]
        for seed in seeds:
            run = f"{name.split(' ')[0]}{'-cache' if cached else ''}-s{seed}"
            res = train_student(corpus, args.out, run, STUDENT, method, args.epochs, seed,
                                args.cache_k if cached else None, log=quiet)
            rows.setdefault(name, []).append({"seed": seed, **res["final"]["val"], "train_time_s": res["train_time_s"],
                                              "samples": res["samples"], "student_params": res["student"]["params"],
                                              "cache": (res["teacher"] or {}).get("cache", {}).get("bytes_per_token")})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    summary = {
        "corpus": "Debian fortunes-min (fortunes, literature, riddles; 98,399 bytes), byte tokenizer",
        "teacher": {"layers": args.teacher_layers, "params": t_res["student"]["params"], "val": t_res["final"]["val"], "epochs": args.teacher_epochs},
        "cache_k": args.cache_k,
        "epochs": args.epochs, "seeds": seeds, "commit": commit,
        "hardware": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                    f"{torch.get_num_threads()} thread(s)",
        "wall_s": round(time.perf_counter() - t0, 1),
        "methods": {},
    }
    print(f"teacher: {t_res['student']['params']:,} params, val ppl {t_res['final']['val']['ppl']:.3f}")
    for name, rs in rows.items():
        ppl = [r["ppl"] for r in rs]
        sd = statistics.stdev(ppl) if len(ppl) > 1 else 0.0
        summary["methods"][name] = {"ppl_mean": statistics.mean(ppl), "ppl_std": sd, "runs": rs}
        print(f"{name:22s} val ppl {statistics.mean(ppl):.3f} ± {sd:.3f}  ({', '.join(f'{p:.3f}' for p in ppl)})")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
