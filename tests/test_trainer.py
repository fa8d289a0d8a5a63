"""End to end: a tiny run learns, writes its folder, resumes exactly, stops on NaN."""

import json

import pytest
import torch
from safetensors.torch import load_file

from kdistill.config import validate_config
from kdistill.engine.checkpoint import find_checkpoint, list_checkpoints
from kdistill.engine.trainer import lr_factor
from kdistill.errors import ConfigError, NonFiniteError, ShapeError
from kdistill.methods import Method, register_method
from kdistill.runs import run_experiment

QUIET = dict(log=lambda s: None)


def test_tiny_run_beats_chance_and_writes_run_folder(tiny_cfg, tmp_path):
    res = run_experiment(validate_config(tiny_cfg()), tmp_path / "r", **QUIET)
    run = tmp_path / "r"
    assert res["teacher"]["metrics"]["test"]["acc"] > 0.6  # 4 classes: chance is 0.25
    assert res["final"]["test"]["acc"] > 0.4
    for f in ("config.yaml", "metrics.jsonl", "results.json", "model.safetensors", "model.json",
              "teacher/model.safetensors", "teacher/results.json"):
        assert (run / f).is_file(), f
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert {"train_loss", "train_loss_kd", "train_loss_ce", "test_acc", "test_agreement", "test_ece"} <= set(rows[0])
    saved = json.loads((run / "results.json").read_text())
    assert saved["method"] == ["0.9*kd", "0.1*ce"]
    assert saved["best"]["epoch"] in (0, 1, 2)
    assert saved["student"]["params"] == 16 * 8 + 8 + 8 * 4 + 4
    # the deployable file holds the student alone: no teacher, no method parts
    assert set(load_file(str(run / "model.safetensors"))) == {"body.fc1.weight", "body.fc1.bias", "head.weight", "head.bias"}


def test_finished_run_folder_is_not_overwritten(tiny_cfg, tmp_path):
    cfg = validate_config(tiny_cfg(train={"epochs": 1}, teacher={"model": "mlp", "train": {"epochs": 1}}))
    run_experiment(cfg, tmp_path / "r", **QUIET)
    with pytest.raises(ConfigError, match="already holds a finished run"):
        run_experiment(cfg, tmp_path / "r", **QUIET)


def test_resume_is_bit_identical(tiny_cfg, tmp_path):
    cfg = tiny_cfg(train={"epochs": 4, "checkpoint_every": 5}, teacher={"model": "mlp", "train": {"epochs": 2}},
                   student={"model": "mlp", "kwargs": {"hidden": [8], "dropout": 0.2}})
    full = run_experiment(validate_config(cfg), tmp_path / "full", **QUIET)
    # the same run, killed after epoch 1 step boundary: simulate by training 4 epochs with a
    # stop signal raised mid-epoch, then resuming
    from kdistill.engine import trainer as tr

    original = tr.Trainer._install_signals
    calls = {"n": 0}

    def stop_soon(self):
        saved = original(self)
        if self.run_dir.name != "cut":  # the teacher trains first, in cut/teacher
            return saved
        orig_step = self.optimizer.step

        def step(*a, **k):
            calls["n"] += 1
            if calls["n"] == 13:  # mid epoch 2 (8 steps per epoch)
                self._stop_signal = 15
            return orig_step(*a, **k)

        self.optimizer.step = step
        return saved

    tr.Trainer._install_signals = stop_soon
    try:
        with pytest.raises(Exception, match="SIGTERM.*--resume"):
            run_experiment(validate_config(cfg), tmp_path / "cut", **QUIET)
    finally:
        tr.Trainer._install_signals = original
    assert not (tmp_path / "cut" / "results.json").exists()
    found = find_checkpoint(tmp_path / "cut" / "checkpoints", "last")
    assert found is not None and found[1]["batch"] == 5 and found[1]["epoch"] == 1
    resumed = run_experiment(validate_config(cfg), tmp_path / "cut", resume=True, **QUIET)
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["final"]["test"]["acc"] == full["final"]["test"]["acc"]
    rows = [json.loads(line)["epoch"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert rows == [0, 1, 2, 3]


@register_method("test_nan_every_3rd")
class NanEveryThird(Method):
    """CE that turns NaN on every third call (calls 3, 6, 9, ...): a blow-up on demand."""

    name = "test_nan_every_3rd"
    needs_teacher = False
    calls = 0

    def forward(self, ctx):
        self.calls += 1  # per instance: the preflight check runs its own copy once
        loss = torch.nn.functional.cross_entropy(ctx.student_logits, ctx.labels)
        return loss * float("nan") if self.calls % 3 == 0 else loss


def test_non_finite_loss_stops_with_step_and_checkpoint(tiny_cfg, tmp_path):
    NanEveryThird.calls = 0
    cfg = tiny_cfg(train={"epochs": 3, "checkpoint_every": 1}, method={"name": "test_nan_every_3rd"}, teacher=None)
    with pytest.raises(NonFiniteError, match=r"epoch 0, step 2: loss_test_nan_every_3rd went NaN/Inf. "
                                             r"The last good checkpoint is .*last-000000002"):
        run_experiment(validate_config(cfg), tmp_path / "nan", **QUIET)
    assert not (tmp_path / "nan" / "results.json").exists()


def test_non_finite_skip_counts_skips(tiny_cfg, tmp_path):
    NanEveryThird.calls = 0
    cfg = tiny_cfg(train={"epochs": 1, "on_nonfinite": "skip"}, method={"name": "test_nan_every_3rd"}, teacher=None)
    res = run_experiment(validate_config(cfg), tmp_path / "skip", **QUIET)
    assert res["skipped_steps"] == 8 // 3  # 8 batches of 32: calls 3 and 6 are skipped
    assert res["steps"] == 8 - res["skipped_steps"]
    assert json.loads((tmp_path / "skip" / "results.json").read_text())["skipped_steps"] == res["skipped_steps"]


def test_class_count_mismatch_is_caught_before_training(tiny_cfg, tmp_path):
    cfg = tiny_cfg(student={"model": "mlp", "kwargs": {"hidden": [8], "num_classes": 7}})
    with pytest.raises(ShapeError, match="4 classes"):
        run_experiment(validate_config(cfg), tmp_path / "x", **QUIET)


def test_wrong_input_size_is_caught(tiny_cfg, tmp_path):
    cfg = tiny_cfg(student={"model": "cnn1d"}, data={"options": {"num_classes": 4, "input_shape": [2, 3, 3]}})
    with pytest.raises(ShapeError, match="does not accept inputs of shape"):
        run_experiment(validate_config(cfg), tmp_path / "x", **QUIET)


def test_checkpoints_are_pruned_to_two(tiny_cfg, tmp_path):
    cfg = tiny_cfg(train={"epochs": 4}, teacher=None, method={"name": "ce"})
    run_experiment(validate_config(cfg), tmp_path / "p", **QUIET)
    assert len(list_checkpoints(tmp_path / "p" / "checkpoints", "last")) == 2
    assert len(list_checkpoints(tmp_path / "p" / "checkpoints", "best")) == 1


@pytest.mark.parametrize("schedule", ["cosine", "step", "constant"])
def test_lr_schedules(schedule):
    f = [lr_factor(s, 100, 10, schedule, [0.5, 0.75], 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warm-up
    if schedule == "cosine":
        assert f[10] == pytest.approx(1.0) and f[99] < 0.01
        assert all(a >= b for a, b in zip(f[10:], f[11:]))
    elif schedule == "step":
        assert f[49] == 1.0 and f[50] == pytest.approx(0.1) and f[75] == pytest.approx(0.01)
    else:
        assert set(f[10:]) == {1.0}


def test_first_phase_is_capped_at_the_main_training(tiny_cfg, tmp_path):
    # AB's initialisation phase defaults to 30 epochs; a 2-epoch run runs 2 of them
    cfg = tiny_cfg(train={"epochs": 2}, method={"name": "ab"},
                   teacher={"model": "mlp", "kwargs": {"hidden": [64]}, "train": {"epochs": 2}},
                   student={"model": "mlp", "kwargs": {"hidden": [8]}})
    try:
        run_experiment(validate_config(cfg), tmp_path / "r", **QUIET)
    except ShapeError:
        pytest.skip("ab needs maps on this pair")
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    phase_rows = [r for r in rows if "phase" in r]
    assert len(phase_rows) == 2 and [r["phase_epoch"] for r in phase_rows] == [0, 1]


def test_first_phase_uses_the_runs_optimizer_at_the_phase_learning_rate(tiny_cfg, tmp_path, monkeypatch):
    """RepDistiller's init stage (our first phase) is an SGD with the main run's momentum and weight decay; an
    Adam at an SGD-sized learning rate wrecked AB's initialised layers (a resnet8 student at
    75.8% against 90.4% alone, CPU run of the methods study). The phase must build the run's
    optimizer, with its settings, at ``init_lr`` or else the run's learning rate."""
    from kdistill.engine import phases

    made = []
    real = phases.make_optimizer

    def spy(params, cfg, device):
        opt = real(params, cfg, device)
        made.append(opt)
        return opt

    monkeypatch.setattr(phases, "make_optimizer", spy)
    train = {"epochs": 1, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
    cfg = tiny_cfg(train=train, method={"name": "fitnet", "hint_epochs": 1, "hint_lr": 0.02},
                   teacher={"model": "mlp", "kwargs": {"hidden": [64]}, "train": {"epochs": 1}},
                   student={"model": "mlp", "kwargs": {"hidden": [8]}})
    run_experiment(validate_config(cfg), tmp_path / "r", **QUIET)
    assert len(made) == 1
    group = made[0].param_groups[0]
    assert isinstance(made[0], torch.optim.SGD)
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.02, 0.9, 5e-4)
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows if "phase" in r] == ["fitnet_hint"]
