"""The loop's budget and its accounting: ``train.max_steps`` (and per phase for the teacher),
exact resume under it, one evaluation of the last epoch, and throughput from step time."""

import json
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

from kdistill.config import validate_config
from kdistill.engine.optim import lr_factor
from kdistill.engine.trainer import Trainer
from kdistill.runs import run_experiment

QUIET = dict(log=lambda s: None)


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _count_evaluations(monkeypatch, sleep: float = 0.0) -> dict[str, int]:
    calls: dict[str, int] = {}
    real = Trainer.evaluate

    def counting(self):
        calls[self.run_dir.name] = calls.get(self.run_dir.name, 0) + 1
        time.sleep(sleep)
        return real(self)

    monkeypatch.setattr(Trainer, "evaluate", counting)
    return calls


def test_the_last_epoch_is_evaluated_once_and_its_metrics_are_final(tiny_cfg, tmp_path, monkeypatch):
    calls = _count_evaluations(monkeypatch)
    res = run_experiment(validate_config(tiny_cfg()), tmp_path / "r", **QUIET)
    assert calls["r"] == 3  # one per epoch; before, a fourth for "final"
    last = _rows(tmp_path / "r")[-1]
    assert res["final"]["test"]["acc"] == last["test_acc"]
    assert res["final"]["test"]["nll"] == last["test_nll"]


def test_max_steps_stops_mid_epoch_with_its_own_schedule(tiny_cfg, tmp_path):
    # 256 samples at batch 32: 8 steps an epoch; 11 steps end 3 steps into epoch 1
    cfg = tiny_cfg(train={"epochs": 50, "max_steps": 11},
                   teacher={"model": "mlp", "kwargs": {"hidden": [16]}, "train": {"epochs": 9, "max_steps": 5}})
    res = run_experiment(validate_config(cfg), tmp_path / "r", **QUIET)
    assert res["steps"] == 11 and res["epochs"] == 2 and res["max_steps"] == 11
    rows = _rows(tmp_path / "r")
    assert [r["epoch"] for r in rows] == [0, 1] and [r["step"] for r in rows] == [8, 11]
    # the cosine schedule spans the 11 steps, not 50 epochs: the last step's rate
    assert rows[-1]["lr"] == pytest.approx(0.01 * lr_factor(10, 11, 0, "cosine", [0.5, 0.75], 0.1))
    assert "test_acc" in rows[-1]  # the cut epoch is evaluated (it is the last)
    teacher = json.loads((tmp_path / "r" / "teacher" / "results.json").read_text())
    assert teacher["steps"] == 5  # teacher.train.max_steps: the teacher's own budget


def test_max_steps_with_epochs_zero_is_a_budget_not_an_error(tiny_cfg, tmp_path):
    cfg = tiny_cfg(train={"epochs": 0, "max_steps": 3}, teacher={"model": "mlp", "train": {"epochs": 1}})
    assert run_experiment(validate_config(cfg), tmp_path / "r", **QUIET)["steps"] == 3


def test_max_steps_resumes_exactly(tiny_cfg, tmp_path, monkeypatch):
    cfg = tiny_cfg(train={"epochs": 50, "max_steps": 13, "deterministic": True},
                   teacher={"model": "mlp", "kwargs": {"hidden": [16]}, "train": {"epochs": 1}})
    full = run_experiment(validate_config(cfg), tmp_path / "full", **QUIET)
    real = Trainer._stopping

    def stop_at_10(self, step=None):
        if self.run_dir.name == "cut" and step == 10 and not getattr(self, "_stopped_once", False):
            self._stopped_once, self._stop_signal = True, signal.SIGTERM
            return True
        return real(self, step)

    monkeypatch.setattr(Trainer, "_stopping", stop_at_10)
    with pytest.raises(Exception, match="SIGTERM"):
        run_experiment(validate_config(cfg), tmp_path / "cut", **QUIET)
    monkeypatch.setattr(Trainer, "_stopping", real)
    resumed = run_experiment(validate_config(cfg), tmp_path / "cut", resume=True, **QUIET)
    assert resumed["steps"] == full["steps"] == 13
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in _rows(tmp_path / "cut")] == [8, 13]


def test_throughput_counts_step_time_not_evaluations(tiny_cfg, tmp_path, monkeypatch):
    _count_evaluations(monkeypatch, sleep=0.25)
    res = run_experiment(validate_config(tiny_cfg()), tmp_path / "r", **QUIET)
    # three evaluations of 0.25 s each are in the wall time and not in the step time
    assert res["train_time_s"] - res["train_step_time_s"] >= 0.7
    # samples / step time, with results.json's step time rounded to the millisecond (a
    # 0.04 s step time is 1.2% off after rounding: compare on the seconds, within the rounding)
    assert 3 * 256 / res["train_samples_per_s"] == pytest.approx(res["train_step_time_s"], abs=5e-4 + 1e-6)
    assert "train_tokens_per_s" not in res  # image labels: no per-position targets
