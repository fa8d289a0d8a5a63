"""``webdataset``: images in tar shards (the WebDataset layout), e.g. ``train-{000..099}.tar``.

A sample is the group of tar members sharing a key (the path up to the first dot of the
file name): ``000123.jpg`` + ``000123.cls`` (the label as decimal text). Patterns use
brace expansion (``braceexpand``) and are relative to ``data.root``.

Reading: when the source opens, every shard's headers are scanned once (headers only, no
image data) into an index of ``(shard, offset, size)`` per sample; images are then read
and decoded per batch in the loader's workers, so the data never has to fit in memory.
Two epoch orders:

* ``order: global`` (default): one permutation of all samples per ``(seed, epoch)``,
  every ``world``-th for each rank, exactly as the other sources. Reads seek within
  shards (local disks and SSDs; page-cached shards).
* ``order: shards``: the shards are permuted per ``(seed, epoch)`` and dealt to ranks
  (``rank::world``); each shard's samples are permuted within the shard and read
  shard after shard, so a process touches one shard at a time (the WebDataset way, for
  slow or remote storage). Ranks with fewer samples repeat their first ones to match the
  longest (as DistributedSampler pads).

Resume is exact in both: the order is a function of ``(seed, epoch)`` and a batch of its
indices and ``(seed, epoch, batch, rank)``, so ``iterate(epoch, start)`` decodes only the
batches from ``start`` on and yields exactly what the uninterrupted run saw. Rank shards are
disjoint and cover the epoch (up to that padding).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..safe_read import MAX_CLASSES
from .datasets import register_dataset
from .decode import DecodeOptions, decodes_images
from .images import ImageSet, image_splits
from .loaders import Augment

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")
LABEL_EXTS = ("cls", "label", "class")


def expand(pattern: str | list[str], root: Path) -> list[Path]:
    """Shard paths of a brace pattern (or a list of them), relative to ``root``."""
    pats = [pattern] if isinstance(pattern, str) else list(pattern)
    out = []
    for p in pats:
        try:
            from braceexpand import braceexpand

            names = list(braceexpand(p))
        except ImportError:
            if "{" in p:
                raise DataError("webdataset: brace patterns need braceexpand: pip install 'kdistill[images]'.") from None
            names = [p]
        out += [root / n for n in names]
    return out


class TarReader:
    """Random access to the images of tar shards through a header index (picklable; each
    process opens its own file handles)."""

    def __init__(self, files: list[str], shard: np.ndarray, offset: np.ndarray, size: np.ndarray, keys: list[str]):
        self.files, self.shard, self.offset, self.size, self.keys = files, shard, offset, size, keys
        self._fh: dict[int, object] = {}

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_fh"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._fh = {}

    def __len__(self) -> int:
        return len(self.shard)

    def read(self, i: int) -> bytes:
        s = int(self.shard[i])
        fh = self._fh.get(s)
        if fh is None:
            fh = self._fh[s] = open(self.files[s], "rb")
        fh.seek(int(self.offset[i]))
        return fh.read(int(self.size[i]))

    def describe(self, i: int) -> str:
        return f"{self.keys[i]} in {os.path.basename(self.files[int(self.shard[i])])}"

    def identity(self) -> bytes:
        h = hashlib.sha256()
        for f in self.files:
            h.update(f"{os.path.basename(f)}\t{os.path.getsize(f)}\n".encode())
        h.update(self.shard.tobytes() + self.offset.tobytes() + self.size.tobytes())
        return h.digest()


def index_shards(paths: list[Path], image_ext: str | None, label_ext: str | None):
    """``(TarReader, labels)`` from the shards' headers (and the small label members)."""
    shard, offset, size, keys, labels = [], [], [], [], []
    for s, path in enumerate(paths):
        if not path.is_file():
            raise DataError(f"webdataset: shard {path} not found.")
        groups: dict[str, dict[str, tarfile.TarInfo]] = {}
        order = []
        try:
            with tarfile.open(path, "r:") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    base = os.path.basename(m.name)
                    if base.startswith("."):
                        continue
                    stem, _, ext = base.partition(".")
                    key = os.path.join(os.path.dirname(m.name), stem)
                    if key not in groups:
                        groups[key] = {}
                        order.append(key)
                    groups[key][ext.lower()] = m
                with open(path, "rb") as raw:
                    for key in order:
                        g = groups[key]
                        ie = image_ext or next((e for e in IMAGE_EXTS if e in g), None)
                        le = label_ext or next((e for e in LABEL_EXTS if e in g), None)
                        if ie not in g or le not in g:
                            raise DataError(f"webdataset: sample {key!r} in {path.name} lacks an image "
                                            f"({image_ext or '/'.join(IMAGE_EXTS)}) or a label "
                                            f"({label_ext or '/'.join(LABEL_EXTS)}); it has {sorted(g)}.")
                        labels.append(_label(raw, g[le], key, path))
                        im = g[ie]
                        shard.append(s)
                        offset.append(im.offset_data)
                        size.append(im.size)
                        keys.append(key)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"webdataset: cannot read shard {path}: {e}.") from None
    if not keys:
        raise DataError(f"webdataset: no samples in {len(paths)} shard(s) ({paths[0] if paths else 'none'}).")
    reader = TarReader([str(p) for p in paths], np.asarray(shard, np.int64), np.asarray(offset, np.int64),
                       np.asarray(size, np.int64), keys)
    return reader, np.asarray(labels, dtype=np.int64)


def shard_order(data: ImageSet, seed: int, epoch: int, shuffle: bool, rank: int, world: int) -> torch.Tensor:
    """``order: shards``: this rank's positions for ``epoch`` (see the module docstring)."""
    reader: TarReader = data.reader
    shard_of = reader.shard[data.rows]
    shards = np.unique(shard_of)
    if len(shards) < world:
        raise DataError(f"webdataset: order 'shards' needs at least as many shards ({len(shards)}) as "
                        f"processes ({world}); use order: global or more shards.")
    rng = np.random.default_rng([seed, epoch, 7])
    if shuffle:
        shards = shards[rng.permutation(len(shards))]
    per_rank = []
    for r in range(world):
        pos = []
        for s in shards[r::world]:
            mine = np.nonzero(shard_of == s)[0]
            pos.append(mine[rng.permutation(len(mine))] if shuffle else mine)
        per_rank.append(np.concatenate(pos))
    longest = max(len(p) for p in per_rank)
    mine = per_rank[rank]
    mine = np.concatenate([mine, mine[: longest - len(mine)]]) if len(mine) < longest else mine
    return torch.from_numpy(mine.astype(np.int64))


class TarImageSet(ImageSet):
    """An :class:`ImageSet` over tar shards with a choice of epoch order."""

    order_mode = "global"

    def epoch_order(self, seed, epoch, shuffle, rank, world, augment, views: int = 0):
        if self.order_mode == "global":
            return super().epoch_order(seed, epoch, shuffle, rank, world, augment, views)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        n = len(self)
        aug = augment.params(n, 4, g) if isinstance(augment, Augment) and augment.active else None
        if views:
            aug = torch.randint(0, views, (n,), generator=g)
        return shard_order(self, seed, epoch, shuffle, rank, world), aug

    def samples_per_rank(self, world: int) -> int:
        if self.order_mode == "global" or world == 1:
            return super().samples_per_rank(world)
        return len(shard_order(self, 0, 0, False, 0, world))  # the longest rank's count, every epoch


@register_dataset("webdataset")
@decodes_images
def webdataset(root: str | None = None, train: str | list[str] | None = None, test: str | list[str] | None = None,
               val: str | list[str] | None = None, image_ext: str | None = None, label_ext: str | None = None,
               classes: list[str] | None = None, num_classes: int | None = None, order: str = "global",
               size: int | None = None, resize: int | None = None, channels: int | None = None, mean=None,
               std=None, decode: DecodeOptions = DecodeOptions(), on_bad: str = "fail", stats_samples: int = 1000,
               samples_per_shard: int | None = None):
    """Tar shards (see the module docstring); image options as ``imagefolder``.

    Args:
        root: the folder the patterns are relative to (``data.root``).
        train, test, val: shard patterns, e.g. ``train-{000..009}.tar``.
        image_ext, label_ext: member extensions (default: the first image / ``cls`` found).
        classes: class names (label = position); or ``num_classes``; default: largest label + 1.
        order: ``global`` or ``shards``.
        samples_per_shard: the samples every shard but the last of a split holds (WebDataset's
            fixed-size shards); a shard with fewer was cut short. Without it a cut shard is still
            found when it lacks the tar end-of-archive marker (cut at a member boundary).
    """
    if order not in ("global", "shards"):
        raise DataError(f"webdataset: order must be 'global' or 'shards', got {order!r}.")
    if not train or not test:
        raise DataError("webdataset: set data.options.train and data.options.test to shard patterns, "
                        "e.g. train: 'train-{000..009}.tar'.")
    base = Path(root or ".").expanduser()
    parts = {}
    for name, pat in (("train", train), ("test", test), ("val", val)):
        if pat:
            parts[name] = index_shards(expand(pat, base), image_ext, label_ext)
    k = len(classes) if classes else (num_classes or max(int(y.max()) for _, y in parts.values()) + 1)
    if k < 2:
        raise DataError(f"webdataset: {k} class(es); classification needs at least two.")
    short = {n: short_shards(r, samples_per_shard) for n, (r, _) in parts.items()}
    parts = {n: (r, torch.from_numpy(y)) for n, (r, y) in parts.items()}
    splits = image_splits(f"webdataset:{base.name}", parts, k, list(classes) if classes else None,
                          first=parts["train"][0].read(0), size=size, resize=resize, channels=channels,
                          mean="auto" if mean is None else mean, std=std, decode=decode, on_bad=on_bad,
                          stats_samples=stats_samples, cls=TarImageSet)
    for name, part in (("train", splits.train), ("test", splits.test), ("val", splits.val)):
        if part is not None:
            part.order_mode = order
            for note in short.get(name, []):  # reported once, counted with the skipped images
                part.skipped.add(note)
                warnings.warn(f"webdataset: {note}; training and scoring use what is there.", stacklevel=2)
    return splits


def short_shards(reader: TarReader, samples_per_shard: int | None) -> list[str]:
    """What is missing from the shards: a shard without the tar end-of-archive marker (two
    zero blocks: a copy or download that stopped at a member boundary, which tarfile reads
    without complaint), and with ``samples_per_shard``, a shard (but the last) with fewer."""
    counts = np.bincount(reader.shard, minlength=len(reader.files))
    notes = []
    for s, path in enumerate(reader.files):
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            f.seek(max(size - 1024, 0))
            tail = f.read(1024)
        cut = size < 1024 or size % 512 or tail.count(0) != len(tail)
        if samples_per_shard and s < len(reader.files) - 1 and counts[s] < samples_per_shard:
            notes.append(f"shard {os.path.basename(path)} holds {counts[s]} of {samples_per_shard} samples "
                         f"({samples_per_shard - counts[s]} missing: cut short?)")
        elif cut:
            notes.append(f"shard {os.path.basename(path)} ends without the tar end-of-archive marker: it was cut "
                         f"short after {counts[s]} samples")
    return notes


def _label(raw, member, key: str, path: Path) -> int:
    """The decimal label of a ``.cls`` member: at most 32 bytes, an integer in
    ``[0, MAX_CLASSES)`` (10**30 or a megabyte of digits is one :class:`DataError`)."""
    raw.seek(member.offset_data)
    text = raw.read(min(member.size, 32)).decode("utf-8", "replace").strip()
    try:
        value = int(text) if member.size <= 32 else None
    except ValueError:
        value = None
    if value is None or not -1 <= value < MAX_CLASSES:  # -1: unlabelled
        raise DataError(f"webdataset: label of {key!r} in {path.name} is {text[:24]!r}"
                        f"{'...' if member.size > 24 else ''}, not an integer in [0, {MAX_CLASSES}).")
    return value
