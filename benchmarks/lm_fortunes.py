"""Distil a byte-level causal LM on Debian's fortune files (apt: fortunes-min).

A 4-layer Llama-style teacher is trained once on the corpus (cross-entropy), then a 1-layer
student is trained with each objective over several seeds: alone (cross-entropy), forward
KL with the live teacher, and forward KL, reverse KL and GKD's JSD (beta 0.5) reading the
teacher from one shared top-k cache (``--cache-k``, tail bin for the rest), each by the
same `kdistill.lm` runs `kdistill train` makes. Prints and writes a JSON of validation perplexities (mean ± sample std over seeds).

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

from kdistill.lm import load_lm_config, run_lm

TEACHER = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4,
           "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 256}
STUDENT = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 256}
# (method, read the teacher from the shared top-k cache?)
METHODS = {
    "alone (ce)": ({"name": "ce"}, False),
    "forward_kl (cache)": ({"name": "forward_kl"}, True),
    "reverse_kl (cache)": ({"name": "reverse_kl"}, True),
    "gkd (jsd, beta 0.5, cache)": ({"name": "gkd", "beta": 0.5}, True),
    "forward_kl (live)": ({"name": "forward_kl"}, False),
    "reverse_kl (live)": ({"name": "reverse_kl"}, False),
}


def config(corpus: str, out: Path, name: str, student: dict, method: dict, epochs: int, seed: int,
           teacher: str | None, lr: float, cache_k: int | None = None) -> dict:
    lm = {"sample_prompts": ["Q:\tWhat is", "A fool"], "max_new_tokens": 40}
    if cache_k:
        lm |= {"cache_k": cache_k, "cache_dir": str(out / f"cache-k{cache_k}")}
    return {
        "task": "causal-lm",
        "data": {"train": corpus, "separator": "%", "block_size": 128, "batch_size": 16, "val_split": 0.1,
                 "split_seed": 0},
        "tokenizer": "byte",
        "teacher": {"model": teacher} if teacher else None,
        "student": {"model": "hf-config", "kwargs": student},
        "method": method,
        "lm": lm,
        "train": {"epochs": epochs, "lr": lr, "optimizer": "adamw", "weight_decay": 0.01, "schedule": "cosine",
                  "warmup_epochs": 1, "seed": seed, "device": "cpu", "progress": False, "grad_clip": 1.0},
        "output": {"dir": str(out), "name": name},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="/usr/share/games/fortunes")
    ap.add_argument("--out", type=Path, default=Path("runs/lm-fortunes"))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--teacher-epochs", type=int, default=20)
    ap.add_argument("--methods", default=";".join(METHODS))
    ap.add_argument("--cache-k", type=int, default=32)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    quiet = lambda line: print(line, flush=True)
    t0 = time.perf_counter()
    teacher_dir = args.out / "teacher"
    if (teacher_dir / "results.json").exists():
        t_res = json.loads((teacher_dir / "results.json").read_text())
    else:
        cfg = load_lm_config(base=config(args.corpus, args.out, "teacher", TEACHER, {"name": "ce"},
                                         args.teacher_epochs, 0, None, 3e-3))
        t_res = run_lm(cfg, resume=True, log=quiet)  # continues an interrupted invocation
    teacher = f"hf:{teacher_dir / 'student'}"
    rows: dict[str, list[dict]] = {}
    for name in args.methods.split(";"):
        method, cached = METHODS[name]
        for seed in seeds:
            run = f"{name.split(' ')[0]}{'-cache' if cached else ''}-s{seed}"
            path = args.out / run / "results.json"
            if path.exists():
                res = json.loads(path.read_text())
            else:
                cfg = load_lm_config(base=config(args.corpus, args.out, run, STUDENT, method, args.epochs,
                                                 seed, teacher, 3e-3, args.cache_k if cached else None))
                res = run_lm(cfg, resume=True, log=quiet)
            rows.setdefault(name, []).append({"seed": seed, **res["final"]["val"], "train_time_s": res["train_time_s"],
                                              "samples": res["samples"], "student_params": res["student"]["params"],
                                              "cache": (res["teacher"] or {}).get("cache", {}).get("bytes_per_token")})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    summary = {
        "corpus": "Debian fortunes-min (fortunes, literature, riddles; 98,399 bytes), byte tokenizer",
        "teacher": {"params": t_res["student"]["params"], "val": t_res["final"]["val"], "epochs": args.teacher_epochs},
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
