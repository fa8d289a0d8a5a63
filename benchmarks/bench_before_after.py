"""Interleaved before/after of ``kdistill bench``: an older commit's ``bench.py`` against this
checkout's, in one process, on the same machine, alternating rounds (old, new, old, new, ...).

Used when ``kdistill bench`` moved from its own ``fast_step`` to timing the Trainer's
``train_step`` (issue "Layers you can see and enforce"): the paths ``student``, ``kd_live``
and ``kd_cached`` changed code; ``naive`` is the same code in both and serves as the
control (any difference there is the machine's noise)::

    PYTHONPATH=src python benchmarks/bench_before_after.py --old-commit b1092b5 --rounds 3 \\
        --out benchmarks/results/bench_cpu_before_after.json

The old ``bench.py`` is read with ``git show COMMIT:src/kdistill/bench.py`` and imported with
its relative imports pointed at the installed ``kdistill`` (it only uses names that still exist).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _old_bench(commit: str):
    src = subprocess.run(["git", "show", f"{commit}:src/kdistill/bench.py"], cwd=HERE, capture_output=True,
                         text=True, check=True).stdout
    src = src.replace("from .", "from kdistill.")
    tmp = Path(tempfile.mkdtemp(prefix="kdistill-oldbench-")) / "old_bench.py"
    tmp.write_text(src)
    spec = importlib.util.spec_from_file_location("old_bench", tmp)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> int:
    from kdistill import bench as new

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-commit", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--paths", default="student,kd_live,kd_cached,naive")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    old = _old_bench(args.old_commit)
    paths = tuple(args.paths.split(","))
    kw = dict(device="cpu", batch_size=args.batch_size, steps=args.steps, warmup=args.warmup,
              n_train=args.n_train, paths=paths)
    rounds: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
    for r in range(args.rounds):
        for name, mod in (("old", old), ("new", new)):
            res = mod.run_bench(**kw, log=lambda line, name=name, r=r: print(f"[{name} round {r + 1}] {line}",
                                                                           flush=True))
            for p, v in res["paths"].items():
                rounds[name].setdefault(p, []).append(round(v["images_per_s"], 2))
    table = {p: {name: {"median": statistics.median(rounds[name][p]), "rounds": rounds[name][p]}
                 for name in ("old", "new")} for p in paths}
    for p, v in table.items():
        print(f"{p:10s} old {v['old']['median']:8.1f} {v['old']['rounds']}  new {v['new']['median']:8.1f} "
              f"{v['new']['rounds']}  new/old {v['new']['median'] / v['old']['median']:.2f}")
    record = {"old_commit": args.old_commit, "settings": {k: v for k, v in kw.items()}, "images_per_s": table,
              "timed_step_new": new.TIMED_STEP, "torch": __import__("torch").__version__}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
