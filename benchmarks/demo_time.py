"""Time `kdistill demo` end to end (issue 2's target: under 3 minutes on a 2-core CPU).

    python benchmarks/demo_time.py [--out runs]

Runs the demo as a user would (a fresh process), and appends one JSON line to
benchmarks/RESULTS_demo.jsonl with the wall time, the demo's accuracies, the command,
the git commit, the CPU model and core count, and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs")
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "kdistill.cli", "demo", "--out", args.out]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return proc.returncode
    run = sorted(Path(args.out).glob("demo-*"), key=lambda p: p.stat().st_mtime)[-1]
    res = json.loads((run / "results.json").read_text())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    row = {
        "command": "kdistill demo",
        "wall_time_s": round(wall, 1),
        "test_acc": {k: round(v["test_acc"], 4) for k, v in res["runs"].items()},
        "commit": commit,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    with open(HERE / "RESULTS_demo.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
