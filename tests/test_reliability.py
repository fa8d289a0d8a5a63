"""Nothing lost, nothing unsafe: kills, signals, corrupt checkpoints, pickles, full disks, fuzzed configs."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn

from kdistill import atomic
from kdistill.cli import main
from kdistill.config import validate_config
from kdistill.engine import checkpoint as ck
from kdistill.engine.checkpoint import find_checkpoint, load_weights, save_checkpoint
from kdistill.errors import CheckpointError, KdistillError

CFG = {
    "data": {"name": "synthetic", "options": {"num_classes": 3, "input_shape": [12], "n_train": 384, "n_test": 96},
             "batch_size": 16},
    "student": {"model": "mlp", "kwargs": {"hidden": [16], "dropout": 0.1}},
    "method": {"name": "ce"},
    "train": {"epochs": 12, "lr": 0.01, "checkpoint_every": 1, "deterministic": True, "progress": False},
}


def _cli(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "kdistill.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def _write_cfg(tmp_path, cfg=CFG):
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _weights(run):
    return load_file(str(run / "model.safetensors"))


def _rows(run):
    """metrics.jsonl without wall-clock timings: a resumed run's record must equal a straight one's."""
    return [{k: v for k, v in json.loads(line).items() if k not in ("epoch_time_s", "data_wait_fraction")}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    p = _cli(["train", str(_write_cfg(tmp)), "--run-dir", str(tmp / "run")])
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    return _weights(tmp / "run"), _rows(tmp / "run")


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_exact(tmp_path, reference):
    """Kill -9 at random times, resume each time; the final weights equal an uninterrupted run's."""
    rng = random.Random(1234)
    cfg, run = _write_cfg(tmp_path), tmp_path / "run"
    kills, unrecoverable = 0, 0
    for attempt in range(12):
        p = _cli(["train", str(cfg), "--run-dir", str(run)] + (["--resume"] if attempt else []))
        if kills < 3:
            # kill once training is under way (a new checkpoint appeared), at a random moment;
            # waiting for the file, not a fixed time, keeps this right on a loaded machine
            before = {c.name for c in run.glob("checkpoints/last-*")}
            deadline = time.time() + 120
            while time.time() < deadline and p.poll() is None and \
                    not ({c.name for c in run.glob("checkpoints/last-*")} - before):
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.4))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
                kills += 1
                if find_checkpoint(run / "checkpoints", "last") is None and (run / "checkpoints").exists():
                    unrecoverable += 1
                continue
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        break
    assert kills >= 1
    assert unrecoverable == 0
    weights, rows = reference
    final = _weights(run)
    assert all(torch.equal(final[k], weights[k]) for k in weights)
    assert _rows(run) == rows  # killed epochs' train_loss averages all their batches
    assert not [p.name for p in run.rglob(".*")], "litter of killed writes left behind"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_and_says_how_to_resume(tmp_path, reference, sig):
    cfg, run = _write_cfg(tmp_path), tmp_path / "run"
    p = _cli(["train", str(cfg), "--run-dir", str(run)])
    # wait until training has written a checkpoint, then signal
    deadline = time.time() + 120
    while time.time() < deadline and not list((run / "checkpoints").glob("last-*")):
        time.sleep(0.1)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    if p.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert p.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    assert not (run / "results.json").exists()
    p = _cli(["train", str(cfg), "--run-dir", str(run), "--resume"])
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    weights, rows = reference
    final = _weights(run)
    assert all(torch.equal(final[k], weights[k]) for k in weights)
    assert _rows(run) == rows


def _tiny_ckpts(tmp_path):
    model = nn.Linear(3, 2)
    root = tmp_path / "ck"
    for step in (1, 2):
        with torch.no_grad():
            model.weight.fill_(step)
        save_checkpoint(root, "last", step, model, {"epoch": 0, "batch": step, "step": step}, {"x": torch.ones(1)})
    return root


def test_corrupt_newest_checkpoint_falls_back_with_warning(tmp_path):
    root = _tiny_ckpts(tmp_path)
    newest = root / "last-000000002" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:-7] + b"garbage")
    with pytest.warns(UserWarning, match="Skipping corrupt checkpoint.*last-000000002"):
        path, meta = find_checkpoint(root, "last")
    assert meta["step"] == 1 and path.name == "last-000000001"
    assert float(load_file(str(path / "model.safetensors"))["weight"][0, 0]) == 1.0


def test_killed_mid_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    root = _tiny_ckpts(tmp_path)

    def boom(*a, **k):
        raise KeyboardInterrupt  # the process dies between writing files and the rename

    monkeypatch.setattr(ck.os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(root, "last", 3, nn.Linear(3, 2), {"epoch": 0, "batch": 3, "step": 3}, {})
    monkeypatch.undo()
    path, meta = find_checkpoint(root, "last")
    assert meta["step"] == 2
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # temp folder removed


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_checkpoint_refused_unless_trusted(tmp_path):
    f = tmp_path / "model.pt"
    torch.save({"state_dict": {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}, "extra": Evil()}, f)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_weights(f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = load_weights(f, trust=True)
    assert set(state) == {"weight", "bias"}
    # plain tensors load without trust
    torch.save({"weight": torch.ones(2, 3)}, tmp_path / "plain.pt")
    assert torch.equal(load_weights(tmp_path / "plain.pt")["weight"], torch.ones(2, 3))


def test_cli_refuses_pickle_teacher_checkpoint(tmp_path, capsys):
    f = tmp_path / "teacher.pt"
    torch.save({"model": {"w": torch.ones(1)}, "x": Evil()}, f)
    cfg = dict(CFG, teacher={"model": "mlp", "checkpoint": str(f)}, method={"name": "kd"})
    code = main(["train", str(_write_cfg(tmp_path, cfg)), "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "--trust-checkpoint" in err and "Traceback" not in err


def test_disk_full_keeps_results_consistent(tmp_path, monkeypatch, capsys):
    cfg = dict(CFG, train=dict(CFG["train"], epochs=1))
    path = _write_cfg(tmp_path, cfg)
    real = atomic.atomic_write_bytes  # every writer's one place (kdistill.atomic)

    def full(p, data):
        if Path(p).name == "results.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(p))
        return real(p, data)

    monkeypatch.setattr(atomic, "atomic_write_bytes", full)
    code = main(["train", str(path), "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "results.json").exists()
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.endswith(".tmp")]
    # the finished training is not lost: resume writes results.json
    monkeypatch.undo()
    assert main(["train", str(path), "--run-dir", str(tmp_path / "r"), "--resume"]) == 0
    assert json.loads((tmp_path / "r" / "results.json").read_text())["epochs"] == 1


def test_unwritable_output_is_one_message(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["train", str(_write_cfg(tmp_path)), "--run-dir", str(blocker / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "Cannot write to the run folder" in err and "Traceback" not in err


@pytest.mark.parametrize("bad, message", [
    ({"train": {"epoch": 3}}, "Did you mean 'epochs'"),
    ({"data": {"name": "fashion-mnist", "root": "/nonexistent"}}, "apt-get install dataset-fashion-mnist"),
    ({"student": {"model": "mlp", "kwargs": {"num_classes": 5}}}, "3 classes"),
    ({"data": dict(CFG["data"], options=dict(CFG["data"]["options"], n_train=0))}, "empty"),
    ({"method": {"name": "kd"}}, "need a teacher"),
    ({"teacher": {"model": "mlp", "kwargs": {"num_classes": 4}}, "method": {"name": "kd"}}, "4"),
    ({"data": dict(CFG["data"], transfer={"source": "npz", "path": "/nope.npz"}),
      "teacher": {"model": "mlp"}, "method": {"name": "kd"}}, "Transfer set file"),
])
def test_user_mistakes_are_one_message(tmp_path, capsys, bad, message):
    cfg = {**CFG, **bad}
    code = main(["train", str(_write_cfg(tmp_path, cfg)), "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err


def test_transfer_set_of_wrong_shape(tmp_path, capsys):
    import numpy as np

    np.savez(tmp_path / "t.npz", x=np.zeros((10, 7), dtype=np.float32))
    cfg = {**CFG, "data": dict(CFG["data"], transfer={"source": "npz", "path": str(tmp_path / "t.npz"), "size": 10}),
           "teacher": {"model": "mlp"}, "method": {"name": "kd"}}
    code = main(["train", str(_write_cfg(tmp_path, cfg)), "--run-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "transfer set's inputs have shape (7,)" in err


def test_nan_inputs_refused(tmp_path, capsys):
    import numpy as np

    x = np.zeros((8, 4), dtype=np.float32)
    x[3, 1] = np.inf
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(8) % 2, x_test=x[:2] * 0, y_test=np.array([0, 1]))
    cfg = {**CFG, "data": {"name": "npz", "options": {"path": str(tmp_path / "d.npz")}}}
    code = main(["train", str(_write_cfg(tmp_path, cfg)), "--run-dir", str(tmp_path / "r")])
    assert code == 2 and "NaN or Inf" in capsys.readouterr().err


# -- config fuzzing ------------------------------------------------------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
keys = st.sampled_from(["data", "teacher", "student", "method", "train", "output", "scheme", "name", "model",
                        "epochs", "lr", "batch_size", "subset", "temperature", "alpha", "kwargs", "augment",
                        "shift", "transfer", "size", "weight", "optimizer", "schedule", "bogus"])
documents = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(keys, inner, max_size=5)), max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents)
def test_fuzzed_configs_validate_or_fail_cleanly(doc):
    try:
        validate_config(doc)
    except KdistillError:
        pass


@settings(max_examples=200, deadline=None)
@given(section=st.sampled_from(["data", "train", "method", "teacher", "student", "output"]),
       key=keys, value=scalars)
def test_fuzzed_overrides_on_a_valid_config(section, key, value):
    doc = json.loads(json.dumps(CFG))
    doc.setdefault(section, {})
    if isinstance(doc[section], dict):
        doc[section][key] = value
    try:
        cfg = validate_config(doc)
    except KdistillError:
        return
    assert cfg.student.model
