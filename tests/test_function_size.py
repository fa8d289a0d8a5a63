"""No function over 80 lines in the modules that had the longest ones (the loop, the bench,
the specialists scheme) or in kd.train's; and the bench runs one small runner per path."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import kdistill
from kdistill import bench

ROOT = Path(kdistill.__file__).parent
FILES = ["bench.py", "engine/trainer.py", "engine/phases.py", "engine/optim.py", "schemes/specialists.py",
         "api.py", "data/torchdata.py", "atomic.py"]


@pytest.mark.parametrize("name", FILES)
def test_no_function_over_80_lines(name):
    tree = ast.parse((ROOT / name).read_text())
    long = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80}
    assert long == {}


def test_the_bench_has_one_runner_per_timed_path(monkeypatch):
    assert all(callable(getattr(bench._Bench, f"run_{p}", None)) for p in bench.PATHS)
    called = []
    real = bench._Bench.run_student

    def spy(self, tmp):
        called.append(tmp)
        return real(self, tmp)

    monkeypatch.setattr(bench._Bench, "run_student", spy)
    out = bench.run_bench("mlp", "mlp", "synthetic", {"input_shape": [8], "n_train": 64, "n_test": 16},
                          batch_size=16, steps=2, warmup=1, device="cpu", paths=("student",), n_train=None)
    assert len(called) == 1 and set(out["paths"]) == {"student"}
    assert out["paths"]["student"]["code_path"] == bench.TIMED_STEP
