"""Damaged or planted resume state: one clear message, or the previous good checkpoint with
a warning; litter of interrupted writes removed on the next start (issue 15, items 3-4)."""

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from kdistill.cli import main
from kdistill.engine import checkpoint as ck
from kdistill.engine.trainer import Trainer

CFG = {
    "data": {"name": "synthetic", "options": {"num_classes": 3, "input_shape": [12], "n_train": 96, "n_test": 48},
             "batch_size": 16},
    "student": {"model": "mlp", "kwargs": {"hidden": [8]}},
    "method": {"name": "ce"},
    "train": {"epochs": 2, "lr": 0.01, "deterministic": True, "progress": False, "checkpoint_every": 2},
}
# 6 steps an epoch; stopped after step 9, the run keeps last-8 (mid-epoch) and last-9


def _files(run):
    rows = [{k: v for k, v in json.loads(line).items() if k not in ("epoch_time_s", "data_wait_fraction")}
            for line in (run / "metrics.jsonl").read_text().splitlines()]
    return (run / "model.safetensors").read_bytes(), rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("damaged")
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(CFG))
    assert main(["train", str(tmp / "cfg.yaml"), "--run-dir", str(tmp / "straight")]) == 0
    mp = pytest.MonkeyPatch()

    def stopping(self, step=None):
        if step == 9:
            self._stop_signal = signal.SIGTERM
            return True
        return False

    mp.setattr(Trainer, "_stopping", stopping)
    try:
        assert main(["train", str(tmp / "cfg.yaml"), "--run-dir", str(tmp / "stopped")]) == 130
    finally:
        mp.undo()
    names = sorted(p.name for p in (tmp / "stopped" / "checkpoints").glob("last-*"))
    assert names == ["last-000000008", "last-000000009"]
    return tmp


def _resume(runs, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(runs / "stopped", run)
    damage(run / "checkpoints" / "last-000000009")
    return main(["train", str(runs / "cfg.yaml"), "--run-dir", str(run), "--resume"]), run


def _rehash(ckpt):
    """Record the files' current checksums, as a planted checkpoint would."""
    meta = json.loads((ckpt / "state.json").read_text())
    meta["sha256"] = {f: hashlib.sha256((ckpt / f).read_bytes()).hexdigest() for f in meta["sha256"]}
    (ckpt / "state.json").write_text(json.dumps(meta))


def _corrupt_weights(ckpt):
    f = ckpt / "model.safetensors"
    f.write_bytes(b"\x00" * 8 + f.read_bytes()[8:])
    _rehash(ckpt)


def _empty_train_state(ckpt):
    buf = io.BytesIO()
    torch.save({}, buf)
    (ckpt / "train_state.pt").write_bytes(buf.getvalue())
    _rehash(ckpt)


def _no_epoch(ckpt):
    meta = json.loads((ckpt / "state.json").read_text())
    del meta["epoch"]
    (ckpt / "state.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", [_corrupt_weights, _empty_train_state, _no_epoch])
def test_damaged_newest_checkpoint_falls_back_and_ends_like_the_straight_run(runs, tmp_path, capsys, damage):
    with pytest.warns(UserWarning, match="Skipping damaged checkpoint.*last-000000009"):
        code, run = _resume(runs, tmp_path, damage)
    assert code == 0, capsys.readouterr().err
    assert "Resuming from" in capsys.readouterr().out
    # the fallback (last-8, mid-epoch) resumes exactly: weights and the record
    assert _files(run) == _files(runs / "straight")


def test_every_checkpoint_damaged_is_one_message(runs, tmp_path, capsys):
    def both(ckpt):
        _corrupt_weights(ckpt)
        _empty_train_state(ckpt.parent / "last-000000008")

    with pytest.warns(UserWarning):
        code, run = _resume(runs, tmp_path, both)
    err = capsys.readouterr().err
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert "can be resumed" in err and "model.safetensors is damaged" in err and "no optimizer state" in err
    assert not (run / "results.json").exists()


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_litter_of_interrupted_writes_is_removed_on_the_next_start(runs, tmp_path, capsys):
    dead, mine = _dead_pid(), os.getpid()

    def litter(ckpt):
        root = ckpt.parent
        (root / f".last-000000010.{dead}.ab12_xyz").mkdir()  # a checkpoint write killed mid-way
        (root / f".last-000000010.{dead}.ab12_xyz" / "model.safetensors").write_bytes(b"half")
        (root.parent / f".results.json.{dead}.k3j5_q0a.tmp").write_text("{")
        (root.parent / f".model.safetensors.{dead}.tmp").write_bytes(b"half")
        (root / f".last-000000011.{mine}.zz99_abc").mkdir()  # a write in progress: kept
        old = root / ".last-000000007.oldname1"  # a name from before pids were in names
        old.mkdir()
        os.utime(old, (time.time() - 3600, time.time() - 3600))
        (root.parent / ".keepme").write_text("not ours")

    code, run = _resume(runs, tmp_path, litter)
    assert code == 0
    left = sorted(p.name for p in run.rglob(".*"))
    assert left == [".keepme", f".last-000000011.{mine}.zz99_abc"]
    assert capsys.readouterr().out.count("left by an interrupted write") == 4


def test_remove_litter_keeps_fresh_old_style_names(tmp_path):
    (tmp_path / ".last-000000001.abcdefgh").mkdir()
    assert ck.remove_litter(tmp_path) == []
    os.utime(tmp_path / ".last-000000001.abcdefgh", (0, 0))
    assert ck.remove_litter(tmp_path) == [".last-000000001.abcdefgh"]


def test_loading_weights_from_a_folder_skips_a_damaged_checkpoint(tmp_path):
    model = torch.nn.Linear(3, 2)
    for kind, step, value in (("last", 4, 4.0), ("best", 3, 3.0)):
        with torch.no_grad():
            model.weight.fill_(value)
        ck.save_checkpoint(tmp_path / "checkpoints", kind, step, model, {"epoch": 1, "batch": 0, "step": step})
    assert float(ck.load_weights(tmp_path)["weight"][0, 0]) == 3.0  # the best one first
    _corrupt_weights(tmp_path / "checkpoints" / "best-000000003")
    with pytest.warns(UserWarning, match="Skipping damaged checkpoint.*best-000000003"):
        assert float(ck.load_weights(tmp_path)["weight"][0, 0]) == 4.0
