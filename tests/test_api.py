"""kd.train and ordinary (x, y) batches for distillers."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import kdistill as kd
from kdistill.errors import ConfigError


def _nets(seed=0):
    torch.manual_seed(seed)
    t = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    s = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    return s, t


def test_tuple_and_dict_batches_give_the_same_loss():
    s, t = _nets()
    d = kd.methods.create("kd", student=s, teacher=t, temperature=2.0, alpha=0.5)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    a, b, c = d((x, y)), d([x, y]), d({"x": x, "y": y})
    assert torch.equal(a["loss"], b["loss"]) and torch.equal(a["loss"], c["loss"])
    with pytest.raises(ConfigError, match=r"\(x, y\) pair"):
        d(x)


def test_train_from_objects_reports_the_returned_students_accuracy(tmp_path):
    s, t = _nets()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    loader = DataLoader(TensorDataset(x[:200], y[:200]), batch_size=50)
    res = kd.train(student=s, teacher=t, train_data=loader, test_data=TensorDataset(x[200:], y[200:]),
                   method="kd", epochs=2, lr=0.01, run_dir=tmp_path / "r", quiet=True)
    assert res["distiller"].student is s
    with torch.no_grad():
        acc = (s.eval()(x[200:]).argmax(1) == y[200:]).float().mean().item()
    assert res["final"]["test"]["acc"] == pytest.approx(acc)
    assert res["dataset"] == {"train": 200, "test": 100, "num_classes": 3, "batch_size": 50}  # the loader's own
    with pytest.raises(ConfigError, match="epochs is 0"):
        kd.train(student=s, teacher=t, train_data=(x, y), test_data=(x, y), epochs=0, quiet=True)
    with pytest.raises(ConfigError, match="either a config or objects"):
        kd.train({"student": {"model": "mlp"}}, student=s)
