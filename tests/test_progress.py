"""Progress: the bar's bookkeeping, the heading lines, and --quiet."""

from __future__ import annotations

import sys

import torch
import yaml

from kdistill.cli import main
from kdistill.engine import progress


def test_bar_counts_steps_and_averages_the_sampled_loss(monkeypatch):
    monkeypatch.setattr(progress, "REFRESH_S", 0.0)  # sample every step
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress.EpochProgress(True, "student", steps_per_epoch=5, epochs=2)
    bar.start(0)
    losses = [2.0, 1.0, 0.5, 0.25, 0.25]
    for v in losses:
        bar.step(32, torch.tensor(v, requires_grad=True) * 1.0)
    task = bar._bar.tasks[0]
    assert task.completed == 5 and task.total == 5
    assert task.description == "student 1/2"
    assert task.fields["loss"] == f"{sum(losses) / 5:.4f}"
    assert float(task.fields["rate"].replace(",", "")) > 0
    bar.stop()
    off = progress.EpochProgress(False, "teacher", 5, 1)
    off.start(0)
    off.step(1, 1.0)
    assert off._bar is None


def test_headings_name_each_phase_and_quiet_prints_none(tiny_cfg, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_cfg(train={"epochs": 1}, teacher={"model": "mlp", "train": {"epochs": 1}})))
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert out.index("── teacher: MLP with ce") < out.index("Teacher test accuracy") < out.index("── student: MLP with kd + ce")
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "b"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "── teacher" not in out and "epoch 1/1" not in out and "test acc" in out  # the final table only


def test_heading_leaves_out_terms_weighted_zero(tiny_cfg, tmp_path, capsys):
    """KD with alpha 1 keeps a CE term of weight 0, which does not train: the heading names
    what the loss is made of, so not that term."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_cfg(train={"epochs": 1}, teacher={"model": "mlp", "train": {"epochs": 1}},
                                           method={"name": "kd", "alpha": 1.0})))
    assert main(["train", str(cfg), "--run-dir", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "── student: MLP with kd ·" in out and "kd + ce" not in out
