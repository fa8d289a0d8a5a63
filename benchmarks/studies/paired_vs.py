"""Paired differences of every row of a study's table to one chosen row (not only to the
student alone): ``python benchmarks/studies/paired_vs.py DIR/STUDY/results.json --vs kd``.

Prints a Markdown table: each row's last-epoch test accuracy (mean ± sample std over its
seeds), the paired difference to the student alone and to the ``--vs`` row (mean and 95%
Student-t interval over the seeds both have), and the rank by mean accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from kdistill.report.tables import paired_difference  # noqa: E402


def _acc(row: dict) -> str:
    s = row["last_acc"]
    return f"{100 * s['mean']:.2f}" + (f" ± {100 * s['std']:.2f}" if s.get("std") is not None else "")


def _diff(a: dict, b: dict | None) -> str:
    if not b:
        return "-"
    d = paired_difference({int(k): v for k, v in a.items()}, {int(k): v for k, v in b.items()})
    if not d.get("seeds"):
        return "-"
    lo, hi = d.get("ci_low"), d.get("ci_high")
    ci = f" [{100 * lo:+.2f}, {100 * hi:+.2f}]" if lo is not None and hi is not None else ""
    return f"{100 * d['mean']:+.2f}{ci}"


def table(res: dict, vs: str) -> str:
    rows = [r for r in res["rows"] if r.get("last_acc_by_seed")]
    by_group = {r["group"]: r for r in rows}
    alone = by_group.get("student", {}).get("last_acc_by_seed")
    other = by_group.get(vs, {}).get("last_acc_by_seed")
    order = sorted(rows, key=lambda r: -r["last_acc"]["mean"])
    rank = {r["label"]: i + 1 for i, r in enumerate(order)}
    out = [f"| row | seeds | last test acc % | Δ vs student alone (95% CI) | Δ vs {vs} (95% CI) | rank |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        seeds = ",".join(str(s) for s in r["seeds"])
        mine = r["last_acc_by_seed"]
        d_alone = "-" if r["role"] in ("teacher", "student") else _diff(mine, alone)
        d_vs = "-" if r["group"] == vs or r["role"] == "teacher" else _diff(mine, other)
        out.append(f"| {r['label']} | {seeds} | {_acc(r)} | {d_alone} | {d_vs} | {rank[r['label']]} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="a study's results.json")
    p.add_argument("--vs", default="kd", help="the row (group) to compare every row with (default: kd)")
    a = p.parse_args(argv)
    try:
        res = json.loads(Path(a.results).read_text())
    except (OSError, ValueError) as e:
        print(f"error: cannot read {a.results}: {e}", file=sys.stderr)
        return 2
    print(table(res, a.vs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
