"""kd.train with objects does what it is given: the DataLoader as it is, no silent
cross-entropy, named keywords, and one clear message per data mistake."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import kdistill as kd
from kdistill.errors import ConfigError, DataError, ShapeError


def _nets(seed=0, t_out=3, s_out=3):
    torch.manual_seed(seed)
    t = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, t_out))
    s = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, s_out))
    return s, t


def _data(n=200):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return x, y


def _train(tmp_path, name="r", **kw):
    s, t = kw.pop("nets", None) or _nets()
    x, y = _data()
    kw = {"student": s, "teacher": t, "train_data": (x, y), "test_data": (x[:50], y[:50]), "epochs": 2,
          "lr": 0.01, "run_dir": tmp_path / name, "quiet": True, "deterministic": True} | kw
    return kd.train(**kw)


class Jittered(Dataset):
    """A map-style dataset with a random transform: fresh noise at every read."""

    def __init__(self, x, y):
        self.x, self.y, self.reads = x, y, 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.reads += 1
        return self.x[i] + 0.1 * torch.randn(self.x.shape[1]), self.y[i]


def test_a_dataloader_is_used_as_given_and_read_every_epoch(tmp_path):
    x, y = _data()
    jit = Jittered(x, y)
    loader = DataLoader(jit, batch_size=25, shuffle=False)
    s, t = _nets()
    seen: list[torch.Tensor] = []
    s.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()) if m.training else None)
    res = _train(tmp_path, train_data=loader, nets=(s, t), epochs=3)
    # its batch size (not 128): 200 / 25 = 8 optimizer steps an epoch
    assert res["steps"] == 24 and res["dataset"]["batch_size"] == 25
    assert jit.reads >= 3 * 200  # read afresh every epoch, not drained once
    # the same first 25 samples in epochs 0 and 1 (no shuffle), with new noise each epoch
    firsts = [b for b in seen if b.shape[0] == 25]
    assert len(firsts) == 24
    assert not torch.equal(firsts[0], firsts[8])
    assert (firsts[0] - firsts[8]).abs().max() < 1.0  # the same samples, other jitter


def test_a_torch_dataset_is_batched_at_batch_size_and_reproducible(tmp_path):
    x, y = _data()
    a = _train(tmp_path, "a", train_data=TensorDataset(x, y), batch_size=40)
    b = _train(tmp_path, "b", train_data=TensorDataset(x, y), batch_size=40)
    assert a["steps"] == 10 and a["final"]["test"]["acc"] == b["final"]["test"]["acc"]
    wa, wb = a["distiller"].student.state_dict(), b["distiller"].student.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_no_teacher_is_never_silent_cross_entropy(tmp_path):
    s, _ = _nets()
    with pytest.raises(ConfigError, match="kd need a teacher"):
        _train(tmp_path, nets=(s, None), method="kd")
    with pytest.raises(ConfigError, match="no teacher.*method='ce'"):
        _train(tmp_path, nets=(s, None))
    res = _train(tmp_path, nets=(s, None), method="ce")
    assert res["method"] == ["1*ce"]


@pytest.mark.parametrize("bad, near", [("epoch", "epochs"), ("weight_decy", "weight_decay"),
                                       ("batchsize", "batch_size")])
def test_a_misspelt_keyword_is_named_with_the_close_one(tmp_path, bad, near):
    with pytest.raises(ConfigError, match=rf"unknown keyword '{bad}'\. Did you mean '{near}'"):
        _train(tmp_path, **{bad: 3})


def test_a_bad_value_names_its_setting(tmp_path):
    with pytest.raises(ConfigError, match="lr: Input should be greater than 0"):
        _train(tmp_path, lr=-1.0)


def test_one_hot_labels_and_numpy_pairs_train_like_index_tensors(tmp_path):
    x, y = _data()
    ref = _train(tmp_path, "ref")
    one_hot = _train(tmp_path, "oh", train_data=(x, nn.functional.one_hot(y, 3).float()))
    arrays = _train(tmp_path, "np", train_data=(x.numpy(), y.numpy()), test_data=(x[:50].numpy(), y[:50].numpy()))
    for other in (one_hot, arrays):
        w0, w1 = ref["distiller"].student.state_dict(), other["distiller"].student.state_dict()
        assert all(torch.equal(w0[k], w1[k]) for k in w0)
        assert other["final"]["test"]["acc"] == ref["final"]["test"]["acc"]


def test_soft_labels_get_one_clear_message(tmp_path):
    x, y = _data()
    soft = torch.softmax(torch.randn(len(y), 3), 1)
    with pytest.raises(DataError, match="not one-hot.*one class index per sample"):
        _train(tmp_path, train_data=(x, soft))
    with pytest.raises(DataError, match="not one-hot"):
        _train(tmp_path, train_data=DataLoader(TensorDataset(x, soft), batch_size=20))


def test_teacher_and_student_class_counts_must_agree(tmp_path):
    with pytest.raises(ShapeError, match="teacher predicts 5 classes and the student 3"):
        _train(tmp_path, nets=_nets(t_out=5))


def test_a_label_outside_the_students_classes_is_named(tmp_path):
    x, y = _data()
    y = y.clone()
    y[7] = 4
    with pytest.raises(DataError, match="labels include 4"):
        _train(tmp_path, train_data=(x, y))


def test_crd_needs_indices_a_given_loader_lacks(tmp_path):
    x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=50)
    method = {"name": "crd", "student_layers": ["1"], "teacher_layers": ["1"], "embed_dim": 8}
    with pytest.raises(ConfigError, match="crd keys its memory by sample index"):
        _train(tmp_path, train_data=loader, method=method)


class Stream(torch.utils.data.IterableDataset):
    """Samples that can only be read in order."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        return zip(self.x, self.y)


class SizedStream(Stream):
    def __len__(self):
        return len(self.x)


def test_an_iterable_dataset_streams_at_batch_size(tmp_path):
    x, y = _data()
    res = _train(tmp_path, train_data=SizedStream(x, y), batch_size=50, epochs=2)
    assert res["steps"] == 8 and res["dataset"]["batch_size"] == 50
    with pytest.raises(DataError, match="iterable dataset without a length; give it __len__"):
        _train(tmp_path, train_data=Stream(x, y))
