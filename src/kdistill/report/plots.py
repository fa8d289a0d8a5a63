"""Report plots as PNG files (matplotlib's Agg canvas; no pyplot, no global state).

Every function takes plain numbers and a path, draws one figure with labelled axes and
units, and writes it. Nothing here reads run folders: :mod:`kdistill.report.html` gathers
the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

N_BINS = 15  # the bins of kdistill.metrics.ece (Guo et al. 2017, arXiv:1706.04599)


def _figure(w: float = 7.0, h: float = 4.5, ncols: int = 1, nrows: int = 1, **kw):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _role(label: str) -> str:
    return "teacher" if label.startswith("teacher") else ("scratch" if label.startswith("scratch") else "")


def _color(i: int, role: str = "") -> str:
    if role == "teacher":
        return "black"
    if role == "scratch":
        return "tab:gray"
    palette = [
        "tab:blue",
        "tab:orange",
        "tab:green",
        "tab:red",
        "tab:purple",
        "tab:brown",
        "tab:pink",
        "tab:olive",
        "tab:cyan",
    ]
    return palette[i % len(palette)]


# -- learning curves -----------------------------------------------------------------------
@dataclass
class Curve:
    """Per-epoch rows of one model, one list per seed."""

    label: str
    runs: list[list[dict[str, Any]]]
    role: str = "method"


def _series(runs: list[list[dict]], key: str, scale: float = 1.0):
    """Epochs (1-based) and the mean, min and max of ``key`` over seeds at each epoch."""
    per_epoch: dict[int, list[float]] = {}
    for rows in runs:
        for r in rows:
            if key in r and r.get("epoch", -1) >= 0 and r[key] is not None:
                per_epoch.setdefault(int(r["epoch"]) + 1, []).append(float(r[key]) * scale)
    xs = sorted(per_epoch)
    mean = [sum(per_epoch[x]) / len(per_epoch[x]) for x in xs]
    return xs, mean, [min(per_epoch[x]) for x in xs], [max(per_epoch[x]) for x in xs]


def learning_curves(curves: list[Curve], path: Path, metric: str = "test_acc", scale: float = 100.0,
                    words: str = "test accuracy (%)") -> Path:
    """Training loss and the headline metric (``metric``, a metrics.jsonl column, times
    ``scale``; test accuracy in percent by default) per epoch; a band spans the seeds' min
    to max. The dotted line is the NLL of the metric's split."""
    fig, axes = _figure(11, 4.2, ncols=2)
    ax_loss, ax_acc = axes[0]
    split = metric.split("_")[0]
    for i, c in enumerate(curves):
        color = _color(i, c.role)
        style = "--" if c.role == "teacher" else "-"
        for ax, key, sc in ((ax_loss, "train_loss", 1.0), (ax_acc, metric, scale)):
            xs, mean, lo, hi = _series(c.runs, key, sc)
            if not xs:
                continue
            ax.plot(xs, mean, style, color=color, marker="o", ms=3, label=f"{c.label} (n={len(c.runs)})")
            if len(c.runs) > 1:
                ax.fill_between(xs, lo, hi, color=color, alpha=0.15, lw=0)
        xs, mean, _, _ = _series(c.runs, f"{split}_nll")
        if xs:
            ax_loss.plot(xs, mean, ":", color=color, lw=1)
    ax_loss.set(xlabel="epoch", ylabel="loss (nats)", title=f"training objective (solid/dashed), {split} NLL (dotted)")
    ax_acc.set(xlabel="epoch", ylabel=words, title=f"{words.split(' (')[0]} per epoch")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    if ax_acc.get_legend_handles_labels()[0]:  # one legend, beside the plots, off the data
        ax_acc.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return _save(fig, path)


# -- accuracy vs cost ----------------------------------------------------------------------
def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (lower or equal cost and higher accuracy,
    or lower cost and equal accuracy), ordered by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def accuracy_vs_cost(points: list[dict[str, Any]], xlabel: str, path: Path, title: str = "") -> Path:
    """Accuracy (%) against a cost (parameters, latency) on a log axis, Pareto front drawn.

    Each point: ``label``, ``x``, ``y`` (accuracy, fraction), optional ``yerr`` (fraction)
    and ``role``.
    """
    pts = [p for p in points if p.get("x") is not None and p.get("y") is not None and p["x"] > 0]
    fig, axes = _figure(7, 4.8)
    ax = axes[0][0]
    # students of one size share an x: spread them a little (log axis) so each stays legible
    same: dict[float, list[int]] = {}
    for i, p in enumerate(pts):
        same.setdefault(p["x"], []).append(i)
    shown = {i: x * 1.05 ** (j - (len(ix) - 1) / 2) for x, ix in same.items() for j, i in enumerate(ix)}
    for i, p in enumerate(pts):
        y = 100 * p["y"]
        err = None
        if p.get("yerr") is not None:  # an interval is drawn only within the possible 0-100%
            h = 100 * p["yerr"]
            err = [[min(h, y)], [min(h, 100 - y)]]
        marker = "s" if p.get("role") == "teacher" else ("D" if p.get("role") == "scratch" else "o")
        color = _color(i, p.get("role", ""))
        ax.errorbar(shown[i], y, yerr=err, fmt=marker, color=color, capsize=3, label=p["label"])
        ax.annotate(p["label"], (shown[i], y), textcoords="offset points", xytext=(5, 4), fontsize=8, color=color)
    front = pareto_front([(p["x"], p["y"]) for p in pts])
    if len(front) > 1:
        ax.plot(
            [pts[i]["x"] for i in front],
            [100 * pts[i]["y"] for i in front],
            "-",
            color="tab:red",
            alpha=0.4,
            lw=2,
            label="Pareto front",
        )
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    # plain numbers (0.015, 8000) read better than 1.5x10^-2 on a cost axis; minor ticks are
    # labelled only when the data span less than a factor 3 (else they crowd the axis)
    plain = FuncFormatter(lambda v, _: f"{v:.3g}")
    ax.xaxis.set_major_formatter(plain)
    xs = [p["x"] for p in pts]
    narrow = bool(xs) and max(xs) / min(xs) < 3
    if narrow:  # label a few minor ticks (2 and 5 of each decade), not all eight: they overlap
        from matplotlib.ticker import LogLocator

        ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    ax.xaxis.set_minor_formatter(plain if narrow else NullFormatter())
    ax.tick_params(axis="x", which="both", labelrotation=30, labelsize=8)
    if not any(p.get("yerr") is not None for p in pts):  # an interval needs two seeds or more
        title = title.replace(", 95% CI", "").replace(" (95% CI)", "")
    ax.set(xlabel=xlabel, ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3, which="both")
    if pts:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return _save(fig, path)


# -- sweep heatmap -------------------------------------------------------------------------
def heatmap(
    values: list[list[float | None]],
    xs: list,
    ys: list,
    xlabel: str,
    ylabel: str,
    path: Path,
    title: str = "",
    cbar: str = "test accuracy (%)",
) -> Path:
    """A grid of values (rows follow ``ys``, columns ``xs``), each cell annotated."""
    import numpy as np

    arr = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    fig, axes = _figure(1.2 * len(xs) + 3, 0.7 * len(ys) + 2.5)
    ax = axes[0][0]
    im = ax.imshow(arr, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(xs)), [f"{x:g}" if isinstance(x, (int, float)) else str(x) for x in xs])
    ax.set_yticks(range(len(ys)), [f"{y:g}" if isinstance(y, (int, float)) else str(y) for y in ys])
    finite = arr[np.isfinite(arr)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0
    for r in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            if np.isfinite(arr[r, c]):
                ax.text(
                    c,
                    r,
                    f"{arr[r, c]:.1f}",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if arr[r, c] < mid else "black",
                )
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    fig.colorbar(im, ax=ax, label=cbar)
    return _save(fig, path)


# -- calibration and per-class accuracy ----------------------------------------------------
@dataclass
class Reliability:
    """Per-bin counts, accuracy and mean confidence of one model's predictions."""

    label: str
    count: list[int] = field(default_factory=list)
    acc: list[float | None] = field(default_factory=list)
    conf: list[float | None] = field(default_factory=list)
    ece: float = 0.0


def reliability_bins(logits: Tensor, labels: Tensor, label: str = "", n_bins: int = N_BINS) -> Reliability:
    """Equal-width confidence bins, bin ``b`` holding ``(b/n, (b+1)/n]`` as in
    :func:`kdistill.metrics.ece`; the returned ``ece`` equals that function's value."""
    probs = logits.float().softmax(-1)
    conf, pred = probs.max(-1)
    correct = (pred == labels).float()
    bins = torch.clamp((conf * n_bins).ceil().long() - 1, 0, n_bins - 1)
    out = Reliability(label)
    gap = 0.0
    for b in range(n_bins):
        m = bins == b
        k = int(m.sum())
        out.count.append(k)
        if k:
            a, c = float(correct[m].mean()), float(conf[m].mean())
            out.acc.append(a)
            out.conf.append(c)
            gap += k * abs(a - c)
        else:
            out.acc.append(None)
            out.conf.append(None)
    out.ece = gap / max(1, len(labels))
    return out


def reliability_diagram(items: list[Reliability], path: Path) -> Path:
    """Accuracy per confidence bin against the diagonal of perfect calibration, and the
    number of samples per bin below."""
    fig, axes = _figure(7, 6, nrows=2, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax, axc = axes[0][0], axes[1][0]
    n = max(1, len(items))
    width = 1.0 / N_BINS / n
    for i, it in enumerate(items):
        lefts = [b / N_BINS + i * width for b in range(N_BINS)]
        color = _color(i, _role(it.label))
        ax.bar(
            lefts,
            [a if a is not None else 0 for a in it.acc],
            width=width,
            align="edge",
            color=color,
            alpha=0.75,
            edgecolor="white",
            label=f"{it.label} (ECE {100 * it.ece:.2f}%)",
        )
        axc.bar(lefts, it.count, width=width, align="edge", color=color, alpha=0.75)
    ax.plot([0, 1], [0, 1], "--", color="tab:red", lw=1, label="perfect calibration")
    ax.set(
        ylabel="accuracy in bin (fraction correct)",
        xlim=(0, 1),
        ylim=(0, 1),
        title=f"reliability diagram ({N_BINS} equal-width bins, test set)",
    )
    axc.set(xlabel="confidence: max softmax probability", ylabel="samples (count)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)  # off the bars
    ax.grid(alpha=0.3)
    return _save(fig, path)


def per_class_accuracy(logits: Tensor, labels: Tensor, num_classes: int) -> list[float | None]:
    pred = logits.argmax(-1)
    out = []
    for k in range(num_classes):
        m = labels == k
        out.append(float((pred[m] == k).float().mean()) if m.any() else None)
    return out


def per_class_plot(
    items: list[tuple[str, list[float | None]]], path: Path, class_names: list[str] | None = None
) -> Path:
    """Accuracy per true class, models side by side."""
    k = max((len(a) for _, a in items), default=0)
    fig, axes = _figure(min(14.0, max(7.0, 0.25 * k * max(1, len(items)) + 3)), 4.2)
    ax = axes[0][0]
    width = 0.8 / max(1, len(items))
    for i, (label, accs) in enumerate(items):
        xs = [c + (i - (len(items) - 1) / 2) * width for c in range(len(accs))]
        ax.bar(
            xs,
            [100 * a if a is not None else 0 for a in accs],
            width=width,
            color=_color(i, _role(label)),
            label=label,
        )
    names = [f"{c}: {class_names[c]}" if class_names and c < len(class_names) else str(c) for c in range(k)]
    ax.set_xticks(range(k), names, rotation=30 if class_names else 0, ha="right" if class_names else "center")
    ax.set(xlabel="true class", ylabel="test accuracy (%)", ylim=(0, 105), title="accuracy per class")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)
