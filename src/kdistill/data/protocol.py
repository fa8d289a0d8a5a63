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

    def loader(self, batch_size: int, *, shuffle: bool = True, seed: int = 0,
               device: torch.device | str = "cpu", drop_last: bool = False, augment: Any = None,
               rank: int = 0, world: int = 1, views: Any = None) -> Loader:
        """A loader for training: this process's shard (``rank`` of ``world``), the epoch's
        order drawn from ``(seed, epoch)``, ``augment`` applied on ``device``."""
        ...
