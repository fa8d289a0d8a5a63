"""A LoRA student distilled with forward KL on Debian's fortune files (apt: fortunes-min).

The setting LoRA is for: an existing small model adapted to new text. A 4-layer teacher is
trained on the corpus (cross-entropy, as ``benchmarks/lm_fortunes.py``); the "existing"
student is a 1-layer model trained briefly with cross-entropy (``--base-epochs``). From that
base, for every seed:

* **LoRA + forward KL**: adapters on every linear layer of the decoder (``student.peft``),
  the teacher read from a shared top-k cache;
* **LoRA alone**: the same adapters trained with cross-entropy, no teacher;
* **full + forward KL**: every weight of the base trained, same teacher and cache.

Prints and writes a JSON of validation perplexities (mean ± sample std over seeds).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/lm_lora_fortunes.py --out runs/lm-lora --seeds 0,1,2
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
from kdistill.lm.suite import FORTUNES, fortunes_min, llama, run_config, teacher_model, train_teacher

STUDENT = llama(1, 64)
LORA = {"r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": "all-linear"}
ROWS = {  # name: (method, LoRA?, teacher?)
    "lora + forward_kl": ({"name": "forward_kl"}, True, True),
    "lora alone (ce)": ({"name": "ce"}, True, False),
    "full + forward_kl": ({"name": "forward_kl"}, False, True),
}


def run(raw: dict, log) -> dict:
    done = Path(raw["output"]["dir"]) / raw["output"]["name"] / "results.json"
    if done.is_file():
        return json.loads(done.read_text())
    return run_lm(load_lm_config(base=raw), resume=True, log=log)


def student_run(args, corpus, base: Path, name: str, seed: int, quiet) -> dict:
    method, lora, with_teacher = ROWS[name]
    lr = args.lora_lr if lora else args.lr
    raw = run_config(corpus, args.out, f"{name.split(' ')[0]}-{method['name']}-s{seed}", STUDENT, method,
                     args.epochs, seed, teacher_model(args.out) if with_teacher else None, lr=lr,
                     cache_k=args.cache_k if with_teacher else None, sample_prompts=[])
    raw["student"] = {"model": f"hf:{base}", **({"peft": LORA} if lora else {})}
    return run(raw, quiet)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs/lm-lora"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--base-epochs", type=int, default=2)
    ap.add_argument("--teacher-epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=3e-3, help="full student")
    ap.add_argument("--lora-lr", type=float, default=1e-2, help="LoRA students")
    ap.add_argument("--cache-k", type=int, default=32)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    quiet = lambda line: print(line, flush=True)
    t0 = time.perf_counter()
    corpus = fortunes_min(args.out / "corpus", FORTUNES)
    t_res = train_teacher(corpus, args.out, llama(4, 128), args.teacher_epochs, 0, log=quiet)
    b_res = run(run_config(corpus, args.out, "base", STUDENT, {"name": "ce"}, args.base_epochs, 0,
                           sample_prompts=[]), quiet)
    base = args.out / "base" / "student"
    rows: dict[str, list[dict]] = {}
    for name in ROWS:
        for seed in seeds:
            res = student_run(args, corpus, base, name, seed, quiet)
            v = res["final"]["val"]
            rows.setdefault(name, []).append({"seed": seed, "ppl": v["ppl"], "acc": v["acc"],
                                              "agreement": v.get("agreement"), "train_time_s": res["train_time_s"],
                                              "trainable_params": res["student"].get("trainable_params"),
                                              "params": res["student"]["params"]})
            print(f"{name} seed {seed}: val ppl {v['ppl']:.3f}", flush=True)
    table = {}
    for name, rs in rows.items():
        ppl = [r["ppl"] for r in rs]
        table[name] = {"ppl_mean": statistics.mean(ppl), "ppl_std": statistics.stdev(ppl) if len(ppl) > 1 else 0.0,
                       "runs": rs}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = {"teacher_val_ppl": t_res["final"]["val"]["ppl"], "base_val_ppl": b_res["final"]["val"]["ppl"],
           "rows": table, "lora": LORA, "student": STUDENT, "epochs": args.epochs, "base_epochs": args.base_epochs,
           "teacher_epochs": args.teacher_epochs, "lr": args.lr, "lora_lr": args.lora_lr, "cache_k": args.cache_k,
           "seeds": seeds, "seconds": round(time.perf_counter() - t0, 1), "commit": commit,
           "torch": torch.__version__, "machine": platform.machine(), "date": time.strftime("%Y-%m-%d")}
    (args.out / "lm_lora_fortunes.json").write_text(json.dumps(out, indent=1))
    print(json.dumps({k: (v["ppl_mean"], v["ppl_std"]) for k, v in table.items()}))


if __name__ == "__main__":
    main()
