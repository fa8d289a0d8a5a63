"""A device-resident batch loader (the airbench way: no DataLoader, no workers).

The whole dataset is moved to the device once; each epoch's order is a ``randperm`` drawn
from a generator seeded by ``(seed, epoch)``, and augmentation parameters for the epoch are
drawn the same way, so any step of any epoch can be reproduced exactly: resuming in the
middle of an epoch needs only ``(epoch, step)``. With several processes each takes every
``world``-th sample of the permutation (a sharded sampler).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .recipe import CropFlip, Recipe, RecipeConfig


@dataclass
class Augment:
    """On-device, vectorised augmentation.

    Attributes:
        shift: random translation of up to ``shift`` pixels (zero padding), per sample; on
            images the FitNets/Hinton "jitter", and random crop with padding.
        flip: random horizontal flip with probability 0.5.
    """

    shift: int = 0
    flip: bool = False

    @property
    def active(self) -> bool:
        return self.shift > 0 or self.flip

    def describe(self) -> dict:
        """What a teacher cache records of the augmentation of its views."""
        return {"shift": self.shift, "flip": self.flip}

    def params(self, n: int, ndim: int, g: torch.Generator) -> Tensor:
        """``(n, 3)`` ints: row offset, column offset, flip flag, for ``n`` samples."""
        s = self.shift
        off = torch.randint(0, 2 * s + 1, (n, 2), generator=g) if s else torch.full((n, 2), 0)
        flip = torch.randint(0, 2, (n, 1), generator=g) if self.flip else torch.zeros((n, 1), dtype=torch.long)
        return torch.cat([off, flip], 1)

    def apply(self, x: Tensor, p: Tensor) -> Tensor:
        """Apply per-sample parameters ``p`` (from :meth:`params`) to a batch."""
        s = self.shift
        if s:
            if x.dim() == 4:
                b, c, h, w = x.shape
                xp = F.pad(x, (s, s, s, s))
                rows = (p[:, 0:1] + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, c, h, w + 2 * s)
                xp = xp.gather(2, rows)
                cols = (p[:, 1:2] + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, c, h, w)
                x = xp.gather(3, cols)
            else:
                b, c, length = x.shape
                xp = F.pad(x, (s, s))
                idx = (p[:, 1:2] + torch.arange(length, device=x.device)).view(b, 1, length).expand(b, c, length)
                x = xp.gather(2, idx)
        if self.flip:
            x = torch.where(p[:, 2].view(-1, *([1] * (x.dim() - 1))).bool(), x.flip(-1), x)
        return x


@dataclass
class StoredViews:
    """``K`` augmented views per sample whose parameters were fixed in advance.

    A teacher cache made with ``views=K`` stores the teacher's outputs for ``K`` augmented
    copies of each sample; the loader then shows the student one of exactly those copies
    each epoch, so student and teacher see the same input ("consistent teaching", Beyer et
    al. 2022, arXiv:2106.05237; FKD, Shen & Xing 2021, arXiv:2112.01528).

    Attributes:
        augment: the augmentation whose ``apply`` the parameters are for (an :class:`Augment`,
            or a recipe's :class:`~kdistill.data.recipe.CropFlip`).
        params: ``(N, K, P)`` int64 parameters (the augmentation's ``params`` layout) per sample and view.
    """

    augment: Any
    params: Tensor

    @property
    def count(self) -> int:
        return int(self.params.shape[1])


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool, rank: int, world: int,
                augment: Augment | None = None, dims: int = 4, views: int = 0) -> tuple[Tensor, Tensor | None]:
    """This process's sample order for ``epoch`` and the epoch's per-sample augmentation
    parameters (or stored-view numbers), all drawn from one generator seeded by
    ``(seed, epoch)``: every loader of every source draws them this way."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
    aug = augment.params(n, dims, g) if isinstance(augment, Augment) and augment.active else None
    if views:  # drawn after the order, so the order does not change
        aug = torch.randint(0, views, (n,), generator=g)
    if world > 1:
        # pad so every rank gets the same number of samples (as DistributedSampler does)
        per = -(-n // world)
        order = torch.cat([order, order[: per * world - n]])[rank::world]
    return order, aug


class DeviceLoader:
    """Batches ``{"x", "y", "index"}`` of an in-memory dataset (an
    :class:`~kdistill.data.ArrayDataset`: tensors ``x`` and ``y``, ``num_classes``, and
    optionally ``normalization``) from device memory. This module does not import the
    dataset class: the dataset imports its loader.

    Args:
        data: the dataset.
        batch_size: samples per batch (per process).
        shuffle: a new permutation each epoch (else dataset order).
        seed: base seed of permutations and augmentations.
        device: where batches live; the data is copied there once.
        drop_last: drop a last incomplete batch.
        augment: on-device augmentation for training.
        rank, world: this process's shard.
        views: stored views (from a teacher cache): each epoch every sample gets one of its
            ``K`` views at random, its stored parameters are applied, and batches carry its
            number as ``"view"``. Replaces ``augment``.
    """

    def __init__(
        self,
        data: Any,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        device: torch.device | str = "cpu",
        drop_last: bool = False,
        augment: Augment | None = None,
        rank: int = 0,
        world: int = 1,
        views: StoredViews | None = None,
    ):
        self.data = data
        self.batch_size = int(batch_size)
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.device = torch.device(device)
        if isinstance(augment, RecipeConfig):
            augment = Recipe(augment, data.num_classes, *(getattr(data, "normalization", None) or (None, None)))
        self.recipe = augment if isinstance(augment, Recipe) else None
        self.augment = augment if isinstance(augment, Augment) and augment.active else None
        self.rank, self.world = rank, world
        if views is not None:
            if views.params.dim() != 3 or views.params.shape[0] != len(data):
                shape = tuple(views.params.shape)
                raise ValueError(f"views.params must have shape ({len(data)}, K, P), got {shape}")
            self.augment = self.recipe = None
            views = StoredViews(views.augment, views.params.to(self.device))
        self.views = views
        self.x = data.x.to(self.device)
        self.y = data.y.to(self.device)
        self.epoch = 0

    def _order(self, epoch: int) -> tuple[Tensor, Tensor | None]:
        order, aug = epoch_order(len(self.data), self.seed, epoch, self.shuffle, self.rank, self.world,
                                 self.augment, self.x.dim(), self.views.count if self.views is not None else 0)
        return order.to(self.device), (aug.to(self.device) if aug is not None else None)

    def __len__(self) -> int:
        n = -(-len(self.data) // self.world)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def iterate(self, epoch: int | None = None, start: int = 0) -> Iterator[dict[str, Tensor]]:
        """Batches of ``epoch`` from batch number ``start`` on."""
        epoch = self.epoch if epoch is None else epoch
        order, aug = self._order(epoch)
        for b in range(start, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.x[idx]
            if self.views is not None:
                view = aug[idx]
                x = self.views.augment.apply(x, self.views.params[idx, view])
                yield {"x": x, "y": self.y[idx], "index": idx, "view": view}
                continue
            if aug is not None:
                x = self.augment.apply(x, aug[idx])
            if self.recipe is not None:  # per batch, keyed by (seed, epoch, batch, rank)
                out = self.recipe(x, self.y[idx], key=(self.seed, epoch, b, self.rank), normalized_input=True)
                yield {**out, "y": self.y[idx], "index": idx}
                continue
            yield {"x": x, "y": self.y[idx], "index": idx}

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        return self.iterate()


def augment_from_meta(d: dict) -> Any:
    """The augmentation a teacher cache's ``meta["augment"]`` describes (see ``describe``)."""
    if d.get("kind") == "crop_flip":
        return CropFlip(d["scale"], d["ratio"], d["flip"], d.get("crop", True))
    return Augment(d["shift"], d["flip"])
