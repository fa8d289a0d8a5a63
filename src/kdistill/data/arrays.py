"""In-memory datasets: tensors of inputs and labels, with integrity fingerprints."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..errors import DataError
from .loaders import DeviceLoader

UNLABELED = -1


@dataclass
class ArrayDataset:
    """Inputs ``x`` (float32, channels first) and labels ``y`` (int64; -1 = unlabelled).

    A sample's position in ``x`` is its ``index``: what teacher caches and transfer sets
    key on.
    """

    x: Tensor
    y: Tensor
    num_classes: int
    name: str = "data"
    names: list[str] | None = None
    #: per-channel (mean, std) the inputs were standardised with, when known (the
    #: augmentation recipe undoes it for colour operations)
    normalization: tuple | None = None

    def __post_init__(self):
        self.x = torch.as_tensor(self.x, dtype=torch.float32)
        self.y = torch.as_tensor(self.y, dtype=torch.int64)
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(
                f"{self.name}: {self.x.shape[0]} inputs but {self.y.shape[0]} labels; they must match."
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def class_names(self) -> list[str] | None:
        return self.names

    @property
    def resident(self) -> bool:
        return True

    def take(self, index: Tensor) -> dict[str, Tensor]:
        index = torch.as_tensor(index, dtype=torch.int64)
        return {"x": self.x[index], "y": self.y[index], "index": index}

    def labels(self) -> Tensor:
        return self.y

    def example(self, n: int = 2) -> Tensor:
        return self.x[:n]

    def batches(self, batch_size: int):
        for i in range(0, len(self), batch_size):
            idx = torch.arange(i, min(i + batch_size, len(self)))
            yield {"x": self.x[i : i + batch_size], "y": self.y[i : i + batch_size], "index": idx}

    def loader(self, batch_size: int, **kwargs):
        """The device-resident loader (see :class:`~kdistill.data.DeviceLoader`)."""
        return DeviceLoader(self, batch_size, **kwargs)

    def fingerprint(self) -> str:
        """SHA-256 over shapes, inputs and labels (what a teacher cache is checked against)."""
        h = hashlib.sha256()
        h.update(repr((tuple(self.x.shape), self.num_classes)).encode())
        h.update(self.x.contiguous().numpy().tobytes())
        h.update(self.y.contiguous().numpy().tobytes())
        return h.hexdigest()[:32]

    def validate(self, require_labels: bool = True) -> None:
        """Refuse empty data, non-finite inputs and labels outside ``[0, num_classes)``."""
        if len(self) == 0:
            raise DataError(f"{self.name}: the dataset is empty.")
        bad = ~torch.isfinite(self.x).reshape(len(self), -1).all(1)
        if bad.any():
            idx = bad.nonzero().flatten()[:5].tolist()
            raise DataError(
                f"{self.name}: {int(bad.sum())} inputs contain NaN or Inf (first at indices {idx}); "
                "clean the data before training."
            )
        labelled = self.y[self.y != UNLABELED]
        if require_labels and labelled.numel() == 0:
            raise DataError(f"{self.name}: no sample has a label.")
        out = (labelled < 0) | (labelled >= self.num_classes)
        if out.any():
            vals = sorted(set(labelled[out].tolist()))[:5]
            raise DataError(
                f"{self.name}: labels must lie in [0, {self.num_classes}); found {vals}. "
                "Check the label encoding or the number of classes."
            )

    def select(self, index: Tensor) -> ArrayDataset:
        """The samples at ``index`` (in that order), as a dataset of their own."""
        index = torch.as_tensor(index, dtype=torch.int64)
        return replace(self, x=self.x[index], y=self.y[index])

    def relabel(self, lut: Tensor, num_classes: int) -> ArrayDataset:
        """Every label ``c`` replaced by ``lut[c]``, in a label space of ``num_classes``."""
        return replace(self, y=torch.as_tensor(lut, dtype=torch.int64)[self.y], num_classes=num_classes)

    def concat(self, other: ArrayDataset) -> ArrayDataset:
        """This dataset followed by ``other`` (arrays of the same input shape)."""
        if not isinstance(other, ArrayDataset):
            raise DataError(f"Cannot join {other.name} to {self.name}: transfer sets are in-memory arrays.")
        if other.input_shape != self.input_shape:
            raise DataError(
                f"Cannot join {other.name} {other.input_shape} to {self.name} {self.input_shape}: "
                "input shapes differ."
            )
        return replace(self, x=torch.cat([self.x, other.x]), y=torch.cat([self.y, other.y]))


@dataclass
class DataSplits:
    """The parts of one dataset a run uses."""

    train: ArrayDataset
    test: ArrayDataset
    val: ArrayDataset | None = None

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.train.input_shape
