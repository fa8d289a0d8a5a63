import os
import random

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


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small text corpus for the causal-LM tests: 120 six-word sentences, ``%``-separated
    (a module may define its own ``corpus``, as test_lm_demo and test_lm_lora do)."""
    rng = random.Random(0)
    words = "the cat sat on a mat and the dog ran to the park while birds sang".split()
    path = tmp_path_factory.mktemp("text") / "t.txt"
    path.write_text("".join(" ".join(rng.choice(words) for _ in range(6)) + ".\n%\n" for _ in range(120)))
    return path
