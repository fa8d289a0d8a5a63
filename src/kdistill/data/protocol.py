"""The dataset protocol: what every consumer of data (Trainer, teacher cache, evaluation,
export parity, predict, schemes) may ask of a dataset, whatever holds its samples.

In-memory arrays (:class:`~kdistill.data.ArrayDataset`) and streamed sources (image
folders, Hugging Face datasets, tar shards) implement it; nothing outside ``data/`` reads a
dataset's storage directly.

A *loader* is made by the dataset (``dataset.loader(...)``): arrays give the
device-resident :class:`~kdistill.data.DeviceLoader`, streamed sources a worker-backed
loader. Every loader yields batches ``{"x", "y", "index"}`` (plus ``"view"`` for stored
teacher-cache views) and can start an epoch at any batch (``iterate(epoch, start)``): the
order and augmentation of an epoch are functions of ``(seed, epoch)``, which is what makes
mid-epoch resume exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..errors import DataError


@runtime_checkable
class Loader(Protocol):
    """Batches of one dataset for one process."""

    batch_size: int

    def __len__(self) -> int:
        """Batches per epoch for this process."""
        ...

    def iterate(self, epoch: int, start: int = 0) -> Iterator[dict[str, Tensor]]:
        """The batches of ``epoch`` from batch number ``start`` on (exact resume)."""
        ...


@runtime_checkable
class Dataset(Protocol):
    """A labelled (or partly unlabelled: label ``-1``) set of samples with a fixed order.

    Attributes:
        name: shown in messages.
        num_classes: the label space.
        class_names: human-readable class names when the source has them, else ``None``.
    """

    name: str
    num_classes: int

    def __len__(self) -> int: ...

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape as the model sees it (channels first)."""
        ...

    @property
    def class_names(self) -> list[str] | None: ...

    @property
    def resident(self) -> bool:
        """Whether every sample is held in memory (and may be moved to the device whole)."""
        ...

    def fingerprint(self) -> str:
        """A content hash (what teacher caches and transfer sets are checked against)."""
        ...

    def take(self, index: Tensor) -> dict[str, Tensor]:
        """Samples at ``index`` (int64, any order) as a CPU batch ``{"x", "y", "index"}``."""
        ...

    def labels(self) -> Tensor:
        """Every sample's label, int64, in dataset order."""
        ...

    def example(self, n: int = 2) -> Tensor:
        """The first ``n`` inputs (to size connectors and check models)."""
        ...

    def batches(self, batch_size: int) -> Iterator[dict[str, Tensor]]:
        """Every sample once, in dataset order, without augmentation (evaluation, caching)."""
        ...

    def select(self, index: Tensor) -> Dataset:
        """The samples at ``index`` (int64, in that order) as a dataset of their own
        (a specialist's training subset)."""
        ...

    def relabel(self, lut: Tensor, num_classes: int) -> Dataset:
        """The same samples with every label ``c`` replaced by ``lut[c]`` (int64), in a
        label space of ``num_classes`` classes."""
        ...

    def validate(self, require_labels: bool = True) -> None:
        """Refuse what cannot be trained on (raises ``DataError``): no samples, labels outside
        ``[0, num_classes)`` (``-1``, unlabelled, is allowed), no label at all when
        ``require_labels``, and whatever else the storage can check cheaply (non-finite inputs
        in memory)."""
        ...

    def concat(self, other: Dataset) -> Dataset:
        """This dataset followed by ``other`` (a transfer set: unlabelled inputs the teacher
        labels); a source that cannot join another raises ``DataError`` saying so."""
        ...

    def loader(self, batch_size: int, *, shuffle: bool = True, seed: int = 0,
               device: torch.device | str = "cpu", drop_last: bool = False, augment: Any = None,
               rank: int = 0, world: int = 1, views: Any = None) -> Loader:
        """A loader for training: this process's shard (``rank`` of ``world``), the epoch's
        order drawn from ``(seed, epoch)``, ``augment`` applied on ``device``."""
        ...


def subset(data: Dataset, n: int, seed: int = 0) -> Dataset:
    """A random ``n`` of the samples (``data.subset``), kept in dataset order; all of them
    (``data`` itself) when ``n >= len(data)``. Built on :meth:`Dataset.select`."""
    if n >= len(data):
        return data
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return data.select(idx)


def split(data: Dataset, fraction: float, seed: int = 0,
          hint: str = "use more data or another data.val_split") -> tuple[Dataset, Dataset]:
    """``(rest, held_out)`` with a random ``fraction`` of the samples held out (a validation
    split, named ``<name>-val``), each part in dataset order. Built on :meth:`Dataset.select`."""
    n_out = int(round(len(data) * fraction))
    if fraction > 0 and (n_out == 0 or n_out == len(data)):
        raise DataError(f"{data.name}: {len(data)} samples cannot be split {1 - fraction:.2f}/{fraction:.2f}; "
                        f"{hint}.")
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    rest, held = data.select(perm[n_out:].sort().values), data.select(perm[:n_out].sort().values)
    held.name = f"{data.name}-val"
    return rest, held
