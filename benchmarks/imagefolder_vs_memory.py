"""The same KD run from a PNG folder and from the in-memory Fashion-MNIST source.

    python benchmarks/make_imagefolder.py FOLDER
    python benchmarks/imagefolder_vs_memory.py FOLDER --seeds 0,1,2 [--set data.subset=10000 ...]

Runs examples/imagefolder_kd.yaml on ``data.root=FOLDER`` and the same config with
``data.name=fashion-mnist`` (same pixels, same normalisation, same models and settings),
for each seed; extra ``--set`` overrides apply to both. Appends one JSON record (command,
commit, hardware, per-seed final test accuracies of teacher and student, means) to
results/imagefolder_vs_memory.jsonl.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from kdistill.config import load_config
from kdistill.runs import run_experiment

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "imagefolder_kd.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--sources", default="imagefolder,fashion-mnist",
                    help="which sources to run (one each in two processes fills two cores)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    seeds = [int(s) for s in a.seeds.split(",")]
    every = {"imagefolder": [f"data.root={a.folder}"],
             "fashion-mnist": ["data.name=fashion-mnist", "data.options={}", "data.root=null"]}
    sources = {k: every[k] for k in a.sources.split(",")}
    out: dict[str, dict[int, dict]] = {k: {} for k in sources}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for name, over in sources.items():
                cfg = load_config(EXAMPLE, over + a.overrides + [f"train.seed={seed}", "train.progress=false",
                                                                 f"output.dir={tmp}"])
                res = run_experiment(cfg, run_dir=Path(tmp) / f"{name}-{seed}", log=lambda s: None)
                out[name][seed] = {"student_test_acc": res["final"]["test"]["acc"],
                                   "teacher_test_acc": res["teacher"]["metrics"]["test"]["acc"],
                                   "train_time_s": res["train_time_s"]}
                print(name, seed, out[name][seed], flush=True)
    means = {k: {m: statistics.mean(v[s][m] for s in seeds) for m in ("student_test_acc", "teacher_test_acc")}
             for k, v in out.items()}
    sds = {k: {m: statistics.stdev(v[s][m] for s in seeds) if len(seeds) > 1 else 0.0
               for m in ("student_test_acc", "teacher_test_acc")} for k, v in out.items()}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    argv = ["FOLDER" if x == a.folder else x for x in sys.argv]
    record = {"command": "python " + " ".join(argv), "commit": commit,
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "hardware": f"{platform.machine()} CPU, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}",
              "seeds": seeds, "runs": out, "mean": means, "std": sds}
    print(json.dumps({"mean": means, "std": sds}, indent=1))
    (HERE / "results").mkdir(exist_ok=True)
    with open(HERE / "results" / "imagefolder_vs_memory.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
