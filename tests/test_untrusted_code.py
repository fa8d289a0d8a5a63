"""Nothing a shared file names runs unless the user opted in (issue 15, item 1).

A run folder's ``model.json``, its ``teacher/model.json``, its ``config.yaml`` and the
teacher record in ``results.json`` can name ``package.module:factory``; every command that
rebuilds a network from them must refuse such a name (one message naming the factory, exit
non-zero, nothing run) unless ``--trust-code`` is given. A config the user passes to
``kdistill train`` is their own and may name their factory.
"""

import json
import shutil

import numpy as np
import pytest
import yaml

from kdistill.cli import main
from kdistill.errors import UntrustedCodeError
from kdistill.models import require_trusted, runs_code

CFG = {
    "data": {"name": "synthetic", "options": {"num_classes": 3, "input_shape": [12], "n_train": 96, "n_test": 48},
             "batch_size": 32},
    "student": {"model": "mlp", "kwargs": {"hidden": [8]}},
    "method": {"name": "ce"},
    "train": {"epochs": 1, "lr": 0.01, "deterministic": True, "progress": False},
}

FACTORY = '''
from torch import nn


def make(num_classes, input_shape, width=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], width), nn.ReLU(), nn.Linear(width, num_classes))
'''


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("untrusted")
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(CFG))
    assert main(["train", str(tmp / "cfg.yaml"), "--run-dir", str(tmp / "run")]) == 0
    # a teacher folder beside the student, as a run that trained its teacher has
    shutil.copytree(tmp / "run", tmp / "run" / "teacher", ignore=shutil.ignore_patterns("teacher", "checkpoints"))
    np.savez(tmp / "x.npz", x=np.zeros((4, 12), np.float32))
    return tmp


def _plant(run, tmp_path, where):
    """A copy of the run with the issue's planted record in ``where``."""
    bad = tmp_path / "bad"
    shutil.copytree(run / "run", bad)
    marker = tmp_path / "PWNED"
    planted = {"model": "os:system", "num_classes": 3, "input_shape": [12], "kwargs": {"command": f"touch {marker}"}}
    if where in ("model.json", "teacher/model.json"):
        (bad / where).write_text(json.dumps(planted))
    elif where == "config.yaml":  # a teacher rebuilt from the run's config (eval)
        shutil.rmtree(bad / "teacher")
        cfg = yaml.safe_load((bad / "config.yaml").read_text())
        cfg["teacher"] = {"model": "os:system", "kwargs": planted["kwargs"],
                          "checkpoint": str(run / "run" / "model.safetensors")}
        (bad / "config.yaml").write_text(yaml.safe_dump(cfg))
    else:  # the teacher record of results.json (profile, report)
        shutil.rmtree(bad / "teacher")
        res = json.loads((bad / "results.json").read_text())
        res["teacher"] = {**planted, "checkpoint": str(run / "run" / "model.safetensors")}
        (bad / "results.json").write_text(json.dumps(res))
    return bad, marker


COMMANDS = {
    "eval": lambda bad, run: ["eval", str(bad)],
    "export": lambda bad, run: ["export", str(bad), "-f", "safetensors"],
    "predict": lambda bad, run: ["predict", str(bad), str(run / "x.npz"), "-o", str(bad / "p.npz")],
    "profile": lambda bad, run: ["profile", str(bad), "--no-onnx", "--repeats", "1", "--warmup", "0",
                                 "--batch-sizes", "1"],
    "report": lambda bad, run: ["report", str(bad)],
}
CASES = [(c, "model.json") for c in COMMANDS] + [
    ("eval", "teacher/model.json"), ("profile", "teacher/model.json"),
    ("eval", "config.yaml"), ("profile", "results.json"), ("report", "results.json"),
]


@pytest.mark.parametrize("command,where", CASES)
def test_planted_factory_is_refused_by_every_command(run, tmp_path, capsys, command, where):
    bad, marker = _plant(run, tmp_path, where)
    code = main(COMMANDS[command](bad, run))
    err = capsys.readouterr().err
    assert not marker.exists(), "the planted command ran"
    assert code == 2
    assert "'os:system'" in err and "--trust-code" in err and where.split("/")[-1] in err
    assert err.count("error:") == 1 and "Traceback" not in err


def test_trust_code_runs_it_and_a_bad_factory_is_still_one_message(run, tmp_path, capsys):
    bad, marker = _plant(run, tmp_path, "model.json")
    code = main(["eval", str(bad), "--trust-code"])
    assert marker.exists()  # the user opted in: the factory ran...
    assert code == 2 and "returned int, not a torch.nn.Module" in capsys.readouterr().err  # ...and no traceback


def test_zoo_models_load_without_the_flag(run, capsys):
    assert main(["eval", str(run / "run")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0.0 <= out["student"]["acc"] <= 1.0


def test_own_factory_in_the_config_passed_trains_and_the_folder_then_needs_the_flag(tmp_path, capsys, monkeypatch):
    """The decision in docs/DECISIONS.md: the config on the command line is the user's;
    the run folder it wrote is a file like any other."""
    (tmp_path / "userfactory.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = {**CFG, "student": {"model": "userfactory:make", "kwargs": {"width": 6}}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "cfg.yaml"), "--run-dir", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "r")]) == 2
    assert "'userfactory:make'" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "r"), "--trust-code"]) == 0
    trusted = json.loads(capsys.readouterr().out)
    from kdistill.evaluate import evaluate_run

    assert evaluate_run(tmp_path / "r", trust_code=True)["student"] == trusted["student"]
    with pytest.raises(UntrustedCodeError, match="userfactory:make"):
        evaluate_run(tmp_path / "r")


def test_the_one_check():
    assert not runs_code("mlp") and not runs_code("resnet8x4", {"width": 2})
    assert runs_code("os:system") and runs_code("pkg.mod:make")
    # foreign zoos are fine, unless told to read a file (timm's checkpoint_path is torch.load)
    assert not runs_code("timm:resnet18", {"drop_rate": 0.1})
    assert runs_code("timm:resnet18", {"checkpoint_path": "evil.pth"})
    # a saved Hugging Face folder builds a known architecture, unless told to run its own Python
    assert not runs_code("hf:some/folder", {"new_head": True})
    assert runs_code("hf:some/folder", {"trust_remote_code": True})
    with pytest.raises(UntrustedCodeError, match="checkpoint_path"):
        require_trusted("timm:resnet18", {"checkpoint_path": "evil.pth"}, False, "x/model.json")
    with pytest.raises(UntrustedCodeError, match="x/model.json names the model factory 'os:system'"):
        require_trusted("os:system", {}, False, "x/model.json")
    require_trusted("os:system", {}, True, "x")  # opted in
    require_trusted("pkg.mod:make", {}, frozenset({"pkg.mod:make"}), "x")  # named by the user's own config
    with pytest.raises(UntrustedCodeError):
        require_trusted("os:system", {}, frozenset({"pkg.mod:make"}), "x")


def test_predict_refuses_an_object_array(run, tmp_path, capsys):
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}, 2], dtype=object))
    code = main(["predict", str(run / "run"), str(tmp_path / "obj.npz"), "-o", str(tmp_path / "p.npz")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be read without pickle" in err and "Traceback" not in err
    assert not (tmp_path / "p.npz").exists()
