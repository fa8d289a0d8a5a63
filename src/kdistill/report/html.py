"""``kdistill report``: report.md and a self-contained report.html from run folders alone.

The input is a run folder (one ``results.json``) or a compare/sweep folder (one run folder
per cell). The report holds the comparison table (statistics over seeds), learning
curves, accuracy against parameters and latency with the Pareto front, a temperature x
alpha heatmap when the folder is a sweep over both, and a reliability diagram and
per-class accuracy rebuilt from the saved networks (see :mod:`kdistill.report.recompute`).
The HTML embeds every image as base64 PNG, so the one file can be mailed or archived.
"""

from __future__ import annotations

import base64
import html
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..errors import ConfigError
from ..task import task_named
from . import plots
from .tables import (
    SCRATCH,
    TEACHER,
    RunFolderError,
    RunRecord,
    aggregate,
    collect_runs,
    columns,
    find_run_dirs,
    flatten,
    load_run,
    markdown_table,
    table_legend,
    table_rows,
)

Block = tuple  # ("h1"|"h2"|"p"|"ul"|"table"|"img", ...)


# -- rendering -----------------------------------------------------------------------------
def render_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            out.append(f"# {b[1]}")
        elif kind == "h2":
            out.append(f"## {b[1]}")
        elif kind == "p":
            out.append(b[1])
        elif kind == "ul":
            out.append("\n".join(f"- {x}" for x in b[1]))
        elif kind == "table":
            out.append(b[1])
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})\n\n*{b[2]}*")
        elif kind == "grid":  # ("grid", columns, rows): a table of its own
            cell = lambda c: str(c).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            lines = ["| " + " | ".join(b[1]) + " |", "|" + "---|" * len(b[1])]
            out.append("\n".join(lines + ["| " + " | ".join(cell(c) for c in r) + " |" for r in b[2]]))
    return "\n\n".join(out) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;background:#fff}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f0f0f0}
img{max-width:100%;border:1px solid #eee}
figure{margin:1.5em 0}
figcaption{font-size:13px;color:#555}
"""


def render_html(blocks: list[Block], title: str, root: Path, agg: dict[str, Any] | None) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{html.escape(b[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(b[1]).replace('**', '')}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in b[1]) + "</ul>")
        elif kind == "grid":
            head = "".join(f"<th>{html.escape(c)}</th>" for c in b[1])
            body = "".join("<tr>" + "".join(f"<td style=\"text-align:left;white-space:pre-wrap\">"
                                            f"{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "table" and agg is not None:
            head = "".join(f"<th>{html.escape(c)}</th>" for c in columns(agg))
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in table_rows(agg))
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode((root / b[1]).read_bytes()).decode("ascii")
            parts.append(
                f'<figure><img alt="{html.escape(b[2])}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(b[2])}</figcaption></figure>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


def summary_blocks(agg: dict[str, Any], title: str) -> list[Block]:
    """Title, dataset, the comparison table, its legend, skipped folders and notes."""
    d = agg["dataset"]
    blocks: list[Block] = [
        ("h1", title),
        (
            "p",
            f"Dataset {d.get('name')}: {d.get('num_classes')} classes, {d.get('train')} training and "
            f"{d.get('test')} test samples. Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')}."
            if d.get("test") is not None else
            f"Data {d.get('name')}: {d.get('num_classes')} tokens in the vocabulary, {d.get('train')} training and "
            f"{d.get('val')} validation rows. Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.",
        ),
        ("table", markdown_table(agg)),
        ("p", table_legend(agg)),
    ]
    if agg.get("skipped"):
        blocks += [
            ("h2", "Skipped or failed runs"),
            ("ul", [f"{s['run']}: {s['reason']}" for s in agg["skipped"]]),
        ]
    if agg.get("notes"):
        blocks += [("h2", "Notes"), ("ul", agg["notes"])]
    return blocks


# -- gathering the plot data ---------------------------------------------------------------
def _teacher_curves(records: list[RunRecord]) -> plots.Curve | None:
    seen, runs = set(), []
    for r in records:
        tdir = r.teacher_dir()
        if tdir is None or tdir.resolve() in seen:
            continue
        seen.add(tdir.resolve())
        from .tables import read_metrics

        rows, _ = read_metrics(tdir / "metrics.jsonl")
        if rows:
            runs.append(rows)
    return plots.Curve(TEACHER, runs, TEACHER) if runs else None


def _groups(records: list[RunRecord]) -> dict[str, list[RunRecord]]:
    out: dict[str, list[RunRecord]] = {}
    for r in sorted(records, key=lambda r: (r.group != SCRATCH, r.seed)):
        out.setdefault(r.group, []).append(r)
    return out


def _swept_keys(records: list[RunRecord]) -> dict[str, list]:
    """Config keys whose value differs between the method groups (not seeds, not paths)."""
    values: dict[str, set] = {}
    for r in records:
        if r.group == SCRATCH:
            continue
        for k, v in flatten(r.config).items():
            if k in ("train.seed",) or k.startswith(("output.", "teacher.")) or isinstance(v, (dict, list)):
                continue
            values.setdefault(k, set()).add(v)
    swept = {k: sorted(v, key=lambda x: (str(type(x)), x)) for k, v in values.items() if len(v) > 1}
    # every method group must define the key for it to be a grid axis
    return {k: v for k, v in swept.items() if all(k in flatten(r.config) for r in records if r.group != SCRATCH)}


def _heatmap(records: list[RunRecord], agg: dict[str, Any], out: Path) -> tuple[str, str] | None:
    swept = _swept_keys(records)
    if len(swept) < 2:
        return None
    keys = sorted(swept, key=lambda k: (not k.endswith("temperature"), not k.endswith("alpha"), k))
    kx, ky = keys[0], keys[1]
    rest = keys[2:]
    last = {row["label"]: row["last_acc"]["mean"] for row in agg["rows"] if row["role"] == "method"}
    cell: dict[tuple, float] = {}
    for r in records:
        if r.group not in last or last[r.group] is None:
            continue
        flat = flatten(r.config)
        key = (flat[kx], flat[ky])
        cell[key] = max(cell.get(key, -1.0), 100 * last[r.group])
    xs, ys = swept[kx], swept[ky]
    grid = [[cell.get((x, y)) for x in xs] for y in ys]
    title = "mean last-epoch test accuracy" + (f" (best over {', '.join(rest)})" if rest else "")
    name = "sweep_heatmap.png"
    plots.heatmap(grid, xs, ys, _axis(kx), _axis(ky), out / "plots" / name, title)
    return f"plots/{name}", f"Sweep: {title}, {ky} against {kx}."


def _axis(key: str) -> str:
    if key.endswith("temperature"):
        return f"{key} (T, unitless)"
    if key.endswith("alpha"):
        return f"{key} (KD weight, fraction)"
    return key


def _calibration(records: list[RunRecord], out: Path, log: Callable[[str], None],
                 trust_code: Any = False) -> list[tuple[str, str]]:
    """Reliability diagram and per-class accuracy for the teacher, the scratch student and each
    method, all on one seed (the smallest seed every group has)."""
    from . import recompute

    groups = _groups(records)
    common = set.intersection(*[{r.seed for r in rs} for rs in groups.values()]) if groups else set()
    seed = min(common) if common else None
    picks = [next((r for r in rs if r.seed == seed), rs[0]) for rs in groups.values()][:7]
    data_cache: dict[str, Any] = {}
    rel, pcs, problems = [], [], []
    teacher_done = False
    for r in picks:
        key = json.dumps([r.config.get("data"), r.seed], sort_keys=True, default=str)
        try:
            if key not in data_cache:
                data_cache[key] = recompute.test_data(r)
            test = data_cache[key]
            labels = test.labels()
            if not teacher_done and r.teacher.get("model"):
                try:
                    t_logits = recompute.logits_of(recompute.teacher_model(r, trust_code), test)
                    rel.append(plots.reliability_bins(t_logits, labels, f"teacher {r.teacher.get('model')}"))
                    pcs.append((rel[-1].label, plots.per_class_accuracy(t_logits, labels, test.num_classes)))
                    teacher_done = True
                except recompute.RecomputeError as e:
                    problems.append(str(e))
            s_logits = recompute.logits_of(recompute.student_model(r, trust_code), test)
            label = f"{r.group} s{r.seed}" if len(records) > 1 else f"student {r.results['student'].get('model')}"
            rel.append(plots.reliability_bins(s_logits, labels, label))
            pcs.append((label, plots.per_class_accuracy(s_logits, labels, test.num_classes)))
        except recompute.RecomputeError as e:
            problems.append(str(e))
    for p in problems:
        log(f"report: {p}")
    made = []
    if rel:
        plots.reliability_diagram(rel, out / "plots" / "reliability.png")
        made.append(
            (
                "plots/reliability.png",
                "Reliability diagram on the test set: accuracy per confidence "
                "bin; bars under the diagonal are over-confident.",
            )
        )
        plots.per_class_plot(pcs, out / "plots" / "per_class.png", class_names=getattr(test, "class_names", None))
        made.append(("plots/per_class.png", "Test accuracy per true class."))
    return made


def _cost_points(agg: dict[str, Any], key: str) -> list[dict[str, Any]]:
    pts = []
    for row in agg["rows"]:
        s = row["last_acc"]
        pts.append(
            {
                "label": row["label"],
                "x": row.get(key),
                "y": s["mean"],
                "yerr": s.get("half_width"),
                "role": row["role"],
            }
        )
    return pts


def _records(root: Path, log: Callable[[str], None]) -> tuple[list[RunRecord], list[dict[str, str]], str]:
    """The finished runs of a run folder or a compare folder, the skipped ones, a title."""
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder; give a run folder or a compare folder.")
    if (root / "results.json").exists():
        try:
            return [load_run(root)], [], f"kdistill run {root.name}"
        except RunFolderError as e:
            raise ConfigError(f"{root}: {e}.") from None
    dirs = find_run_dirs(root)
    if not dirs:
        raise ConfigError(f"{root} holds no run folders (no sub-folder with results.json).")
    records, skipped = collect_runs(dirs)
    if not records:
        reasons = "; ".join(f"{s['run']}: {s['reason']}" for s in skipped)
        raise ConfigError(f"No usable run folder in {root} ({reasons}).")
    for s in skipped:
        log(f"report: skipping {s['run']}: {s['reason']}")
    return records, skipped, f"kdistill comparison {root.name}"


def _curves_figure(records: list[RunRecord], root: Path) -> list[tuple[str, str]]:
    """Learning curves of the teacher and every group, on the task's headline metric."""
    hl = records[0].headline
    curves = []
    tc = _teacher_curves(records)
    if tc is not None:
        curves.append(tc)
    for g, rs in _groups(records).items():
        curves.append(plots.Curve(g if len(records) > 1 else "student", [r.metrics for r in rs],
                                  SCRATCH if g == SCRATCH else "method"))
    if not any(c.runs and any(c.runs) for c in curves):
        return []
    words = f"{hl.words} (%)" if hl.percent else hl.words
    plots.learning_curves(curves, root / "plots" / "learning_curves.png", hl.column, 100.0 if hl.percent else 1.0,
                          words)
    return [("plots/learning_curves.png", f"Learning curves: training objective and {hl.split} NLL (left), "
             f"{hl.words} (right) per epoch; bands span the seeds.")]


def _cost_figures(agg: dict[str, Any], root: Path) -> list[tuple[str, str]]:
    """Accuracy against parameters and latency, with the Pareto front."""
    figs = []
    for key, name, xlabel in (
        ("params", "acc_vs_params.png", "parameters (count, log scale)"),
        ("latency_ms_p50", "acc_vs_latency.png", "CPU latency at batch size 1 (ms, median, log scale)"),
    ):
        pts = _cost_points(agg, key)
        if sum(p["x"] is not None for p in pts) >= 1:
            plots.accuracy_vs_cost(pts, xlabel, root / "plots" / name, "accuracy vs cost (last epoch, 95% CI)")
            figs.append((f"plots/{name}", f"Test accuracy against {xlabel.split(' (')[0]}; the line is the "
                         "Pareto front (nothing is both cheaper and more accurate)."))
    return figs


def build_report(path: str | Path, log: Callable[[str], None] = print, calibration: bool = True,
                 trust_code: Any = False) -> dict[str, Any]:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` into ``path``.

    Args:
        path: a finished run folder or a compare/sweep folder of run folders.
        log: prints one line (skipped folders, plots that could not be made).
        calibration: rebuild networks and data for the reliability and per-class plots
            (tasks that have them: image classification).
        trust_code: ``True``, or the model names the user gave (a grid's configs), to allow
            run records that name an importable model factory (see
            :func:`kdistill.models.require_trusted`); refused otherwise.

    Returns:
        ``{"markdown", "html", "plots", "aggregate"}`` (paths and the aggregate).
    """
    root = Path(path)
    records, skipped, title = _records(root, log)
    task = task_named(records[0].task)
    agg = aggregate(records, skipped)
    (root / "plots").mkdir(exist_ok=True)
    figs = _curves_figure(records, root)
    if task.headline.percent:  # the cost plots and the sweep heatmap draw a percentage
        figs += _cost_figures(agg, root)
        hm = _heatmap(records, agg, root)
        figs += [hm] if hm else []
    if calibration and task.calibration:
        figs += _calibration(records, root, log, trust_code)
    blocks = summary_blocks(agg, title)
    if figs:
        blocks.append(("h2", "Plots"))
        blocks += [("img", p, cap) for p, cap in figs]
    blocks += task.report_blocks(records)
    blocks += [("h2", "Runs"), ("ul", [_run_line(r) for r in records])]
    md, page = root / "report.md", root / "report.html"
    atomic_write_text(md, render_markdown(blocks))
    atomic_write_text(page, render_html(blocks, title, root, agg))
    return {"markdown": str(md), "html": str(page), "plots": [str(root / p) for p, _ in figs], "aggregate": agg}


def _run_line(r: RunRecord) -> str:
    method = r.results.get("method", [])
    names = [m.get("name", "?") if isinstance(m, dict) else str(m) for m in method]
    return f"{r.name}: seed {r.seed}, method {', '.join(names)}, train time {r.results.get('train_time_s', '?')} s"
