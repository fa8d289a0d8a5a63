"""Resume is exact for the record, not only the weights (issue 15, item 2).

A run stopped mid-epoch (once while its teacher trains, once while the student trains) and
resumed twice must leave a run folder equal, file by file, to an uninterrupted run's: the
weights, every ``metrics.jsonl`` row (the interrupted epochs' train losses average all of
their batches) and ``results.json`` (teacher metrics and ``kl_to_teacher`` included), apart
from wall-clock timings.
"""

import json
import signal
from pathlib import Path

import pytest
import yaml

from kdistill.cli import main
from kdistill.engine.trainer import Trainer

CFG = {
    # images, so the trainer's channels-last fast path is on (the teacher's logits once
    # differed in the last bits between a teacher trained in-process and one reloaded)
    "data": {"name": "synthetic", "options": {"num_classes": 3, "input_shape": [1, 8, 8], "n_train": 96, "n_test": 48},
             "batch_size": 16},
    "teacher": {"model": "convnet", "kwargs": {"layers": 2}, "train": {"epochs": 2}},
    "student": {"model": "mlp", "kwargs": {"hidden": [8]}},
    "method": {"name": "kd", "temperature": 4.0, "alpha": 0.9},
    "train": {"epochs": 2, "lr": 0.01, "deterministic": True, "progress": False, "checkpoint_every": 2},
}
TIMINGS = {"epoch_time_s", "train_time_s", "throughput", "train_step_time_s", "train_samples_per_s",
           "train_tokens_per_s", "latency_ms_cpu_b1", "peak_memory_bytes", "data_wait_fraction"}


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMINGS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _contents(run: Path) -> dict[str, object]:
    """Every file of a run folder: JSON without timings, everything else as bytes."""
    out = {}
    for f in sorted(p for p in run.rglob("*") if p.is_file()):
        rel = str(f.relative_to(run))
        if f.suffix == ".json":
            out[rel] = _strip(json.loads(f.read_text()))
        elif f.suffix == ".jsonl":
            out[rel] = [_strip(json.loads(line)) for line in f.read_text().splitlines()]
        else:
            out[rel] = f.read_bytes()
    return out


def _interrupt_at(monkeypatch, stops: dict[str, int]):
    """Stop the trainer of the run folder named ``name`` after optimizer step ``step``, as a
    SIGTERM arriving then would (save a checkpoint, raise Interrupted)."""

    def stopping(self, step=None):
        if step is not None and stops.get(self.run_dir.name) == step:
            del stops[self.run_dir.name]
            self._stop_signal = signal.SIGTERM
            return True
        return self._stop_signal is not None

    monkeypatch.setattr(Trainer, "_stopping", stopping)


@pytest.mark.slow
def test_stopped_twice_mid_epoch_and_resumed_equals_the_straight_run(tmp_path, monkeypatch, capsys):
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(CFG))
    cfg = str(tmp_path / "cfg.yaml")
    for d in ("straight", "stopped"):
        (tmp_path / d).mkdir()
    monkeypatch.chdir(tmp_path / "straight")  # relative paths: the records name "run/teacher/..."
    assert main(["train", cfg, "--run-dir", "run"]) == 0

    monkeypatch.chdir(tmp_path / "stopped")
    # 6 batches an epoch: step 3 is mid-epoch 0 of the teacher, step 9 mid-epoch 1 of the student
    _interrupt_at(monkeypatch, {"teacher": 3, "run": 9})
    assert main(["train", cfg, "--run-dir", "run"]) == 130
    assert "--resume" in capsys.readouterr().err
    assert not (tmp_path / "stopped" / "run" / "teacher" / "results.json").exists()
    assert main(["train", cfg, "--run-dir", "run", "--resume"]) == 130  # the teacher finishes, the student stops
    assert (tmp_path / "stopped" / "run" / "teacher" / "results.json").exists()
    assert main(["train", cfg, "--run-dir", "run", "--resume"]) == 0

    straight, stopped = _contents(tmp_path / "straight" / "run"), _contents(tmp_path / "stopped" / "run")
    assert sorted(straight) == sorted(stopped)
    for name in straight:
        assert straight[name] == stopped[name], name
    rows = straight["metrics.jsonl"]
    assert [r["epoch"] for r in rows] == [0, 1] and all(r["train_loss"] > 0 for r in rows)
