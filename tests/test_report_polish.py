"""Report plots: whole-epoch ticks, interval titles only with seeds to make one, class names,
legends off the data."""

from __future__ import annotations

import pytest

from kdistill.report import plots


@pytest.fixture
def figs(monkeypatch):
    made = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: made.append(fig) or path)
    return made


def _legend_outside(ax) -> bool:
    leg = ax.get_legend()
    return leg is not None and leg.get_bbox_to_anchor().x0 >= ax.get_window_extent().x1 - 1


def test_epoch_ticks_are_whole_numbers(figs, tmp_path):
    rows = [[{"epoch": e, "train_loss": 1.0 / (e + 1), "test_acc": 0.5 + 0.1 * e} for e in range(3)]]
    plots.learning_curves([plots.Curve("kd", rows)], tmp_path / "c.png")
    fig = figs[-1]
    fig.canvas.draw()
    ax = fig.axes[1]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert _legend_outside(ax)


def test_interval_title_needs_an_interval(figs, tmp_path):
    one = [{"label": "kd", "x": 1.2, "y": 0.8}, {"label": "scratch", "x": 1.3, "y": 0.7}]
    plots.accuracy_vs_cost(one, "latency (ms)", tmp_path / "a.png", "accuracy vs cost (last epoch, 95% CI)")
    assert figs[-1].axes[0].get_title() == "accuracy vs cost (last epoch)"
    two = [dict(p, yerr=0.01) for p in one]
    plots.accuracy_vs_cost(two, "latency (ms)", tmp_path / "b.png", "accuracy vs cost (last epoch, 95% CI)")
    ax = figs[-1].axes[0]
    assert ax.get_title().endswith("95% CI)")
    figs[-1].canvas.draw()
    assert _legend_outside(ax)


def test_class_names_label_the_classes(figs, tmp_path):
    plots.per_class_plot([("kd", [0.9, 0.5, None])], tmp_path / "p.png", class_names=["cat", "dog", "eel"])
    labels = [t.get_text() for t in figs[-1].axes[0].get_xticklabels()]
    assert labels == ["0: cat", "1: dog", "2: eel"]
