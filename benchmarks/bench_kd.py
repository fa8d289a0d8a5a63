"""KD training throughput: fast paths vs the naive DataLoader loop; appends to RESULTS_perf.json.

The real benchmark (run it on a GPU machine with Fashion-MNIST installed)::

    python benchmarks/bench_kd.py                       # resnet32x4 -> resnet8x4, fashion-mnist padded to 32
    python benchmarks/bench_kd.py --compile             # plus torch.compile
    python benchmarks/bench_kd.py --device cpu --dataset synthetic --teacher mlp --student mlp \\
        --option input_shape=[1,8,8] --steps 5 --warmup 2 --batch-size 32   # a quick CPU check

Each run measures the five paths of :func:`kdistill.bench.run_bench` (student alone, KD with
a live teacher, KD from a teacher cache of augmented views, the naive reference, and the
teacher's forward pass alone), checks the speed targets (:func:`kdistill.bench.check_targets`) and
appends one record to ``benchmarks/RESULTS_perf.json``: the command, the git commit, the
hardware, torch's version, the settings (seed included) and the numbers. Networks are
freshly initialised (throughput does not depend on their weights). Results are whatever
the machine gave: none are written by hand.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _commit() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _option(text: str) -> tuple[str, object]:
    from kdistill.config import parse_override

    return parse_override(text)


def main(argv: list[str] | None = None) -> int:
    from kdistill.bench import PATHS, format_table, format_targets, run_bench
    from kdistill.errors import KdistillError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="resnet32x4")
    ap.add_argument("--student", default="resnet8x4")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--option", action="append", default=[], help="dataset option key=value (repeatable)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compile-mode", default="default",
                    help="torch.compile mode; reduce-overhead adds CUDA graphs")
    ap.add_argument("--compile-scope", default="networks", choices=["networks", "step"])
    ap.add_argument("--channels-last", default=None, action=argparse.BooleanOptionalAction)
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--cache-views", type=int, default=4)
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--repeat", type=int, default=1, help="rounds per path, round-robin; the median is reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS_perf.json")
    args = ap.parse_args(argv)

    try:
        result = run_bench(
            args.teacher,
            args.student,
            args.dataset,
            dict(map(_option, args.option)) if args.option else None,
            batch_size=args.batch_size,
            steps=args.steps,
            warmup=args.warmup,
            device=args.device,
            precision=args.precision,
            compile=args.compile,
            compile_mode=args.compile_mode,
            compile_scope=args.compile_scope,
            channels_last=args.channels_last,
            n_train=args.n_train,
            cache_views=args.cache_views,
            paths=tuple(p for p in args.paths.split(",") if p),
            repeat=args.repeat,
            seed=args.seed,
            log=print,
        )
    except KdistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    record = {
        "command": " ".join(
            ["python", "benchmarks/bench_kd.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "commit": _commit(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **result,
    }
    records = []
    if args.out.is_file():
        try:
            records = json.loads(args.out.read_text())
        except ValueError:
            print(f"error: {args.out} is not valid JSON; move it aside and rerun.", file=sys.stderr)
            return 2
    records.append(record)
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(records, indent=1) + "\n")
    os.replace(tmp, args.out)
    print(f"{'path':10s} {'img/s':>10s} {'ms/step':>9s} {'peak MiB':>9s} {'x naive':>8s}")
    for row in format_table(result):
        print(f"{row[0]:10s} {row[1]:>10s} {row[2]:>9s} {row[3]:>9s} {row[4]:>8s}")
    for line in format_targets(result):
        print(line)
    print(f"appended to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
