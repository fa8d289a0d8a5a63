import os

import pytest
import torch

# two cores, shared: keep torch from oversubscribing them in tests
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def tiny_cfg(tmp_path):
    """A tiny synthetic-data run config (CPU, seconds)."""

    def make(**over):
        cfg = {
            "data": {"name": "synthetic", "options": {"num_classes": 4, "input_shape": [16], "n_train": 256,
                                                      "n_test": 128}, "batch_size": 32},
            "teacher": {"model": "mlp", "kwargs": {"hidden": [64]}, "train": {"epochs": 4}},
            "student": {"model": "mlp", "kwargs": {"hidden": [8]}},
            "method": {"name": "kd", "temperature": 4.0, "alpha": 0.9},
            "train": {"epochs": 3, "lr": 0.01, "progress": False, "deterministic": True},
            "output": {"dir": str(tmp_path / "runs")},
        }
        for k, v in over.items():
            if isinstance(v, dict) and isinstance(cfg.get(k), dict) and k not in ("method", "teacher", "student"):
                cfg[k] = {**cfg[k], **v}
            else:
                cfg[k] = v
        return cfg

    return make


@pytest.fixture
def crash_at_batch(monkeypatch):
    """``crash_at_batch(n, fn)``: call ``fn()`` with the ``n``-th batch an image loader
    finishes raising "killed" (a crash mid-epoch), then put the loader back."""
    from kdistill.data import ImageLoader

    def crash(n: int, fn) -> None:
        finish, calls = ImageLoader.finish, {"n": 0}

        def crashing(self, *a, **kw):
            calls["n"] += 1
            if calls["n"] == n:
                raise RuntimeError("killed")
            return finish(self, *a, **kw)

        monkeypatch.setattr(ImageLoader, "finish", crashing)
        try:
            with pytest.raises(RuntimeError, match="killed"):
                fn()
        finally:
            monkeypatch.setattr(ImageLoader, "finish", finish)

    return crash
