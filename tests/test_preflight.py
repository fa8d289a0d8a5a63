"""The preflight check: every mistake is reported before anything trains, with one message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kdistill.cli import main
from kdistill.config import validate_config
from kdistill.engine.checkpoint import load_into, map_keys
from kdistill.errors import CheckpointError, ConfigError, DataError, KdistillError, ShapeError
from kdistill.methods import METHODS
from kdistill.runs import preflight, run_experiment
from kdistill.taps import normalize_path, resolve, tap_list


def _cfg(tiny_cfg, **over):
    return validate_config(tiny_cfg(**over))


def _npz(tmp_path, name="d.npz", x_test_dim=16, y_train_fix=None):
    rng = np.random.default_rng(0)
    xtr = rng.normal(size=(64, 16)).astype(np.float32)
    ytr = rng.integers(0, 4, 64)
    if y_train_fix is not None:
        ytr[3] = y_train_fix
    xte = rng.normal(size=(32, x_test_dim)).astype(np.float32)
    yte = rng.integers(0, 4, 32)
    np.savez(tmp_path / name, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return {"name": "npz", "options": {"path": str(tmp_path / name), "num_classes": 4}, "batch_size": 16}


def test_a_good_run_passes_and_keeps_the_seed_stream(tiny_cfg):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    report = preflight(_cfg(tiny_cfg))
    assert torch.equal(before, torch.get_rng_state())  # the run that follows draws the same weights
    assert len(report.data.train) == 256
    assert any("1*kd" in line or "kd" in line for line in report.lines)


@pytest.mark.parametrize(
    "over, error, words",
    [
        ({"train": {"epochs": 0}}, ConfigError, "train.epochs is 0"),
        ({"teacher": {"model": "mlp", "train": {"epochs": 0}}}, ConfigError, "teacher.train.epochs is 0"),
        ({"student": {"model": "mlpp"}}, KdistillError, "Did you mean 'mlp'"),
        ({"student": {"model": "mlp", "kwargs": {"hiden": [8]}}}, ConfigError, "hiden"),
        ({"method": {"name": "kd", "temperature": -1}}, ConfigError, "temperature"),
        ({"method": {"name": "fitnet", "student_layers": "net.9", "teacher_layers": "net.0"}}, ShapeError,
         "'net.9'"),
        ({"teacher": None}, ConfigError, "need a teacher"),
    ],
)
def test_mistakes_fail_before_training(tiny_cfg, tmp_path, over, error, words):
    cfg = _cfg(tiny_cfg, **over)
    with pytest.raises(error, match=words.replace("(", r"\(").replace(".", r"\.")):
        run_experiment(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing trained, no folder left behind


def test_split_shapes_and_labels(tiny_cfg, tmp_path):
    with pytest.raises(ShapeError, match=r"test inputs have shape \(12,\) but the training inputs \(16,\)"):
        preflight(_cfg(tiny_cfg, data=_npz(tmp_path, x_test_dim=12)))
    with pytest.raises(DataError, match="-1.*transfer set"):
        preflight(_cfg(tiny_cfg, data=_npz(tmp_path, y_train_fix=-1)))


def test_tap_paths_as_strings_and_indexing():
    assert tap_list("backbone.stages.1.block") == ["backbone.stages.1.block"]
    assert tap_list("a.b, c:input") == ["a.b", "c:input"]
    assert tap_list(["x"]) == ["x"]
    assert normalize_path("stages[1][0].conv") == "stages.1.0.conv"
    net = nn.Module()
    net.stages = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 3), nn.ReLU()))
    assert resolve(net, "stages[1][0]") is net.stages[1][0]
    cfg = METHODS.get("fitnet").make_config(student_layers="stages.1", teacher_layers="stages[1]")
    assert cfg.student_layers == ["stages.1"] and cfg.teacher_layers == ["stages[1]"]
    with pytest.raises(ShapeError, match="No module 'stages.7'"):
        resolve(net, "stages[7]")


def test_prefixed_checkpoints_load_and_a_foreign_head_is_named():
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    for prefix in ("module.", "model.", "_orig_mod.", "module._orig_mod."):
        dst = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        info = load_into(dst, {prefix + k: v for k, v in src.state_dict().items()}, "teacher")
        assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
        assert "".join(info["mapped"]).replace("-", "") == prefix
    wrapped = nn.Module()
    wrapped.model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    assert map_keys(src.state_dict(), set(wrapped.state_dict()))[1] == ["+model."]
    big = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1000))
    with pytest.raises(CheckpointError, match="has 1000 classes and the data has 3"):
        load_into(src, {"module." + k: v for k, v in big.state_dict().items()}, "teacher")


def test_cli_check_exits_without_training(tiny_cfg, tmp_path, capsys):
    import yaml

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(tiny_cfg()))
    assert main(["train", str(good), "--check"]) == 0
    assert "the run can start" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()
    assert main(["train", str(good), "--check", "--set", "method={name: at}",
                 "--set", "method.student_layers=net.9"]) == 2
    assert "net.9" in capsys.readouterr().err
