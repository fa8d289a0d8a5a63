"""PyTorch's own data as a kdistill dataset: a ``torch.utils.data.DataLoader`` used as given,
or a map-style ``Dataset`` batched by kdistill (what ``kd.train`` trains on).

A DataLoader keeps its batch size, its sampler and its workers, and is iterated afresh every
epoch, so random transforms in its dataset draw new values each epoch. Batches are
normalised on the way out (``(x, y)``, ``(x, y, index)`` or dicts; NumPy arrays become
tensors; labels become class indices, see :func:`class_indices`). Nothing is read into
memory ahead of training.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from ..errors import DataError


def class_indices(y: Any, what: str, sample: bool = False) -> Tensor:
    """Labels as int64 class indices. Integer labels (also integer-valued floats) pass;
    exactly one-hot rows (``(n, classes)``, one 1 per row, zeros elsewhere) are converted with
    ``argmax`` (no information is lost); soft labels (probabilities) and other shapes are an
    error naming what was given."""
    y = torch.as_tensor(y)
    if sample:  # one sample's label: a class index, or one one-hot row
        return class_indices(y.reshape(1, -1) if y.dim() == 1 and y.numel() > 1 else y.reshape(1), what)[0]
    if y.dim() == 2 and y.shape[1] > 1:
        one_hot = bool(((y == 0) | (y == 1)).all()) and bool((y.sum(1) == 1).all())
        if not one_hot:
            raise DataError(f"{what}: labels of shape {tuple(y.shape)} are not one-hot (soft labels or "
                            "probabilities); give one class index per sample (a 1-D integer tensor).")
        return y.argmax(1).long()
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() > 1:
        raise DataError(f"{what}: labels of shape {tuple(y.shape)}; give one class index per sample.")
    if y.is_floating_point():
        if not torch.equal(y, y.round()):
            raise DataError(f"{what}: labels must be class indices (integers), not {y.dtype} values "
                            f"such as {float(y[y != y.round()][0]):g}.")
    elif y.dtype == torch.bool or y.is_complex():
        raise DataError(f"{what}: labels must be integer class indices, not {y.dtype}.")
    return y.long()


def as_batch(item: Any, what: str, sample: bool = False) -> dict[str, Tensor]:
    """One batch (or sample) as ``{"x", "y"}`` (plus ``"index"`` when it carries one): from
    ``(x, y)``, ``(x, y, index)`` or a dict with ``x`` and ``y``; arrays become tensors."""
    if isinstance(item, dict):
        if "x" not in item or "y" not in item:
            raise DataError(f"{what}: a dict batch needs keys 'x' and 'y'; it has {sorted(item)}.")
        parts = [item["x"], item["y"]] + ([item["index"]] if "index" in item else [])
    elif isinstance(item, (tuple, list)) and len(item) in (2, 3):
        parts = list(item)
    else:
        raise DataError(f"{what}: each sample or batch must be (x, y), (x, y, index) or a dict with 'x' "
                        f"and 'y'; got {type(item).__name__}.")
    x = torch.as_tensor(parts[0])
    out = {"x": x.float() if not x.is_floating_point() else x, "y": class_indices(parts[1], what, sample)}
    if len(parts) == 3:
        out["index"] = torch.as_tensor(parts[2]).long().reshape(-1)
    return out


class _Indexed(torch.utils.data.Dataset):
    """A map-style dataset whose samples also carry their index."""

    def __init__(self, data):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        b = as_batch(self.data[i], "train_data sample", sample=True)
        return b["x"], b["y"], i


class TorchDataset:
    """A :class:`~kdistill.data.Dataset` over a DataLoader (used as given) or a map-style
    torch Dataset (batched here: ``batch_size``, a new order each epoch from ``(seed, epoch)``).

    Its loader reads the data afresh every epoch, in one process; evaluation sets are better
    read once into memory (``kd.train`` does so). ``take`` needs a map-style dataset.
    """

    def __init__(self, data: Any, num_classes: int, name: str = "train_data", batch_size: int = 128):
        self.name, self.num_classes = name, int(num_classes)
        if isinstance(data, IterableDataset):  # no random access: batched as it streams
            data = DataLoader(data, batch_size=batch_size)
        self.given_loader = isinstance(data, DataLoader)
        self.source = data.dataset if self.given_loader else data
        self.data = data
        # IterableDataset inherits a __getitem__ that raises: it has no random access
        self.map_style = hasattr(self.source, "__getitem__") and not isinstance(self.source, IterableDataset)
        self.default_batch_size = int(data.batch_size or 1) if self.given_loader else int(batch_size)
        if not hasattr(self.source, "__len__"):
            raise DataError(f"{name}: an iterable dataset without a length; give it __len__ (its samples per "
                            "epoch): the epoch's steps set the learning-rate schedule and the progress.")
        first = self.take_first()
        self._shape = tuple(first["x"].shape[1:])
        self._first = first

    def take_first(self) -> dict[str, Tensor]:
        if self.given_loader:
            try:
                item = next(iter(self.data))
            except StopIteration:
                raise DataError(f"{self.name} is empty.") from None
            return as_batch(item, self.name)
        if len(self.source) == 0:
            raise DataError(f"{self.name} is empty.")
        return self.take(torch.arange(min(8, len(self.source))))

    @property
    def carries_index(self) -> bool:
        """Whether training batches say which samples they hold (a DataLoader of kdistill's own
        does; a given one only when it yields ``(x, y, index)`` or a dict with ``index``)."""
        return not self.given_loader or "index" in self._first

    def __len__(self) -> int:
        return len(self.source)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def class_names(self) -> list[str] | None:
        return None

    @property
    def resident(self) -> bool:
        return False

    def fingerprint(self) -> str:
        """Over the size and the first batch (the data is not read whole ahead of time)."""
        h = hashlib.sha256(repr((len(self), self._shape, self.num_classes)).encode())
        h.update(self._first["x"].detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def take(self, index: Tensor) -> dict[str, Tensor]:
        if not self.map_style:
            if self.given_loader and int(torch.as_tensor(index).max()) < self._first["x"].shape[0]:
                return {k: v[index] for k, v in self._first.items() if k != "index"} | {"index": index}
            raise DataError(f"{self.name}: samples of an iterable dataset cannot be taken by index.")
        index = torch.as_tensor(index, dtype=torch.int64)
        rows = [as_batch(self.source[int(i)], f"{self.name} sample {int(i)}", sample=True) for i in index]
        return {"x": torch.stack([r["x"] for r in rows]), "y": torch.cat([r["y"].reshape(1) for r in rows]),
                "index": index}

    def labels(self) -> Tensor:
        """Every label, in dataset order: reads the whole dataset (not done by training)."""
        return torch.cat([b["y"] for b in self.batches(self.default_batch_size)])

    def example(self, n: int = 2) -> Tensor:
        return self.take(torch.arange(min(n, len(self))))["x"]

    def batches(self, batch_size: int) -> Iterator[dict[str, Tensor]]:
        if not self.map_style:
            yield from (as_batch(b, self.name) for b in self.data)
            return
        for i in range(0, len(self), batch_size):
            yield self.take(torch.arange(i, min(i + batch_size, len(self))))

    def select(self, index: Tensor):
        raise DataError(f"{self.name}: a DataLoader's data cannot be subset here; give tensors instead.")

    def relabel(self, lut: Tensor, num_classes: int):
        raise DataError(f"{self.name}: a DataLoader's data cannot be relabelled here; give tensors instead.")

    def validate(self, require_labels: bool = True) -> None:
        """The first batch's labels (later batches are checked as they are read)."""
        y = self._first["y"]
        if require_labels and not bool((y >= 0).any()):
            raise DataError(f"{self.name}: the first batch has no label.")
        if bool(((y < -1) | (y >= self.num_classes)).any()):
            raise DataError(f"{self.name}: labels must lie in [0, {self.num_classes}); found {int(y.max())}.")

    def concat(self, other):
        raise DataError(f"{self.name}: a DataLoader's data cannot be joined to another; give tensors instead.")

    def loader(self, batch_size: int, *, shuffle: bool = True, seed: int = 0, device: torch.device | str = "cpu",
               drop_last: bool = False, augment: Any = None, rank: int = 0, world: int = 1,
               views: Any = None) -> TorchLoader:
        if world > 1:
            raise DataError(f"{self.name}: a DataLoader trains in one process; give tensors for several.")
        if views is not None or getattr(augment, "active", False):
            raise DataError(f"{self.name}: kdistill's augmentation applies to tensors; a DataLoader brings "
                            "its own transforms.")
        return TorchLoader(self, batch_size, shuffle, seed, device, drop_last)


class TorchLoader:
    """The batches of a :class:`TorchDataset` on ``device``, read afresh each epoch."""

    def __init__(self, data: TorchDataset, batch_size: int, shuffle: bool, seed: int, device, drop_last: bool):
        self.data, self.seed, self.device = data, seed, torch.device(device)
        if data.given_loader:
            self.batch_size, self.inner = data.default_batch_size, data.data  # the user's, as given
            self.generator = None
        else:
            self.batch_size = int(batch_size)
            self.generator = torch.Generator()
            self.inner = DataLoader(_Indexed(data.source), batch_size=self.batch_size, shuffle=shuffle,
                                    drop_last=drop_last, generator=self.generator)

    def __len__(self) -> int:
        return len(self.inner)

    def iterate(self, epoch: int, start: int = 0) -> Iterator[dict[str, Tensor]]:
        """The epoch's batches from ``start`` on. A DataLoader of kdistill's own draws its order
        from ``(seed, epoch)`` (exact resume); a given one keeps its own order."""
        if self.generator is not None:
            self.generator.manual_seed(self.seed * 1_000_003 + epoch)
        for b, item in enumerate(self.inner):
            if b < start:
                continue
            batch = as_batch(item, self.data.name)
            if "index" not in batch:  # the given loader's sample positions are not known
                batch["index"] = torch.full_like(batch["y"], -1)
            bad = (batch["y"] < 0) | (batch["y"] >= self.data.num_classes)
            if bool(bad.any()):
                raise DataError(f"{self.data.name}: batch {b} of epoch {epoch} has label "
                                f"{int(batch['y'][bad][0])}, outside 0..{self.data.num_classes - 1}.")
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        return self.iterate(0)
