"""Datasets, validation messages and the device-resident loader."""

import gzip
import struct

import numpy as np
import pytest
import torch

from kdistill.data import ArrayDataset, Augment, DeviceLoader, load_dataset
from kdistill.data.idx import read_idx
from kdistill.errors import DataError


def test_mnist1d_published_settings():
    d = load_dataset("mnist1d")
    assert len(d.train) == 4000 and len(d.test) == 1000
    assert d.input_shape == (1, 40) and d.num_classes == 10
    # generated, so deterministic: the same fingerprint twice
    assert load_dataset("mnist1d").train.fingerprint() == d.train.fingerprint()


def _write_idx(path, arr):
    code = {np.uint8: 0x08}[arr.dtype.type]
    head = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.tobytes())


def test_idx_reader_and_fashion_mnist_layout(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 255, (5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 9], dtype=np.uint8)
    for split, n in (("train", 5), ("t10k", 5)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", imgs[:n])
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", labels[:n])
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), imgs)
    d = load_dataset("fashion-mnist", root=str(tmp_path), normalize=False, pad_to=32)
    assert d.train.x.shape == (5, 1, 32, 32)
    assert torch.allclose(d.train.x[0, 0, 2:30, 2:30], torch.from_numpy(imgs[0] / 255.0).float())


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*data.root"):
        load_dataset("fashion-mnist", root=str(tmp_path / "nowhere"))


def test_truncated_idx_is_refused(tmp_path):
    p = tmp_path / "x.gz"
    with gzip.open(p, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(DataError, match="truncated"):
        read_idx(p)


def test_validation_messages():
    with pytest.raises(DataError, match=r"labels must lie in \[0, 3\); found \[5\]"):
        ArrayDataset(torch.zeros(3, 2), torch.tensor([0, 1, 5]), 3).validate()
    x = torch.zeros(3, 2)
    x[1, 0] = float("nan")
    with pytest.raises(DataError, match="NaN or Inf.*indices \\[1\\]"):
        ArrayDataset(x, torch.tensor([0, 1, 2]), 3).validate()
    with pytest.raises(DataError, match="empty"):
        ArrayDataset(torch.zeros(0, 2), torch.zeros(0), 3).validate()


def test_loader_covers_every_sample_once_and_is_reproducible():
    ds = ArrayDataset(torch.arange(10.0).view(10, 1), torch.arange(10) % 3, 3)
    loader = DeviceLoader(ds, batch_size=4, seed=1)
    idx = torch.cat([b["index"] for b in loader.iterate(0)])
    assert sorted(idx.tolist()) == list(range(10))
    again = torch.cat([b["index"] for b in DeviceLoader(ds, 4, seed=1).iterate(0)])
    assert torch.equal(idx, again)
    other_epoch = torch.cat([b["index"] for b in loader.iterate(1)])
    assert not torch.equal(idx, other_epoch)
    # resuming mid-epoch gives exactly the remaining batches
    tail = torch.cat([b["index"] for b in loader.iterate(0, start=1)])
    assert torch.equal(tail, idx[4:])
    for b in loader.iterate(0):
        assert torch.equal(b["x"].view(-1), b["index"].float())


def test_loader_shards_cover_the_data():
    ds = ArrayDataset(torch.zeros(10, 1), torch.zeros(10), 1)
    shards = [torch.cat([b["index"] for b in DeviceLoader(ds, 3, seed=0, rank=r, world=2).iterate(0)]) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 5
    assert set(shards[0].tolist()) | set(shards[1].tolist()) == set(range(10))


def test_shift_augment_translates_images_and_signals():
    x = torch.zeros(2, 1, 5, 5)
    x[:, 0, 2, 2] = 1.0
    aug = Augment(shift=1)
    p = torch.tensor([[0, 2, 0], [1, 1, 0]])  # offsets (row, col) in [0, 2]; 1 = no shift
    y = aug.apply(x, p)
    assert y[0, 0, 3, 1] == 1 and y[0].sum() == 1  # view starts 1 row up, 1 column right: pixel moves down-left
    assert torch.equal(y[1], x[1])
    sig = torch.arange(5.0).view(1, 1, 5)
    out = Augment(shift=2).apply(sig, torch.tensor([[0, 0, 0]]))
    assert out.view(-1).tolist() == [0, 0, 0, 1, 2]
    flipped = Augment(flip=True).apply(sig, torch.tensor([[0, 0, 1]]))
    assert flipped.view(-1).tolist() == [4, 3, 2, 1, 0]
