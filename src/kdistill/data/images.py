"""Image datasets decoded from files on demand (streamed) or once into memory (resident).

:class:`ImageSet` implements the dataset protocol over a *reader* (anything that returns
the encoded bytes of sample ``i``: files of an image folder, rows of a Hugging Face
dataset). Every image is decoded to a square of side ``load`` (short side resized to
``load``, bilinear, then center-cropped: the "resize" of the usual eval transform) with
``channels`` channels (grey ``L`` or ``RGB``; RGBA and palettes are converted by Pillow).
The model sees ``size x size``:

* evaluation and caching (``batches``, ``take``): the center ``size`` crop, normalised;
* training (:class:`ImageLoader`): the ``load`` square goes to the device as uint8, where
  the recipe's RandomResizedCrop cuts ``size`` out of it (without a crop in the recipe:
  the center crop), then normalisation.

Residency (``data.resident``): ``true`` decodes every image once into a uint8 tensor
(moved to the training device whole, as the in-memory sources are); ``false`` decodes
every batch in DataLoader workers; ``auto`` is resident when ``N * C * load^2`` bytes fit
``data.resident_budget_mb``. Both give the same batches.

Order and resume: the loader's epoch order is drawn exactly as
:class:`~kdistill.data.DeviceLoader` draws it (a permutation from ``(seed, epoch)``, then
every ``world``-th sample for ``rank``), and batch ``b`` is decoded and augmented from its
indices and ``(seed, epoch, b, rank)`` alone, so ``iterate(epoch, start)`` yields exactly
the batches a run that never stopped would have seen from ``start`` on.

Unreadable images (``on_bad``): ``fail`` stops with the file named; ``skip`` drops it
from training batches (a batch may be one smaller) and from scoring: evaluation still
predicts on it as a black image (so predictions stay aligned with labels), then its label
reads ``-1`` (:meth:`ImageSet.labels`) and the metrics leave it out; it is counted in
``skipped``, and warned about once per command.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from ..safe_read import read_bytes
from .contract import image_contract, to_model_input
from .decode import DecodeOptions, default_workers  # noqa: F401  (default_workers: re-exported)
from .loaders import Augment, epoch_order
from .recipe import Recipe, RecipeConfig, center_crop

JPEG_MAGIC = b"\xff\xd8"


def _need_pillow():
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise DataError("Image datasets need Pillow: pip install 'kdistill[images]'.") from None
    return Image, ImageOps


@dataclass(frozen=True)
class Geometry:
    """How a file becomes a tensor: ``channels`` x ``load`` x ``load`` decoded, ``size``
    the model's input side."""

    size: int
    load: int
    channels: int

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise DataError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels}.")
        if self.size < 1 or self.load < self.size:
            raise DataError(f"Image size {self.size} must be >= 1 and resize {self.load} >= size.")


class BadImage(Exception):
    """An image that cannot be decoded (internal; becomes a DataError or a skip)."""


def decode(raw: Any, geo: Geometry) -> np.ndarray:
    """``(C, load, load)`` uint8 from encoded bytes, a path, or a PIL image.

    JPEG bytes are decoded by simplejpeg when it is installed (faster, and it scales down
    in the DCT to the smallest size still >= ``load``), everything else by Pillow."""
    Image, ImageOps = _need_pillow()
    try:
        raw = _encoded(raw, Image)
        img = None
        if isinstance(raw, (bytes, bytearray, memoryview)):
            raw = bytes(raw)
            if raw[:2] == JPEG_MAGIC:
                try:
                    import simplejpeg

                    arr = simplejpeg.decode_jpeg(raw, colorspace="GRAY" if geo.channels == 1 else "RGB",
                                                 min_height=geo.load, min_width=geo.load)
                    img = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)
                except ImportError:
                    img = None
                except ValueError:
                    img = None  # e.g. CMYK JPEGs: let Pillow try
            if img is None:
                img = Image.open(io.BytesIO(raw))
                if img.format == "JPEG":
                    img.draft("L" if geo.channels == 1 else "RGB", (geo.load, geo.load))
                img.load()
        else:
            img = raw
        img = img.convert("L" if geo.channels == 1 else "RGB")
        if img.size != (geo.load, geo.load):
            img = ImageOps.fit(img, (geo.load, geo.load), method=Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError, DataError) as e:
        raise BadImage(_why(e, raw)) from None
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


class _Decode(torch.utils.data.Dataset):
    """What DataLoader workers run: one batch of positions -> uint8 pixels (picklable)."""

    def __init__(self, reader, rows: np.ndarray, geo: Geometry):
        self.reader, self.rows, self.geo = reader, rows, geo

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, pos: int):  # pragma: no cover - the loader always asks for batches
        return self.__getitems__([pos])

    def __getitems__(self, positions: list[int]) -> dict[str, Any]:
        g = self.geo
        x = np.zeros((len(positions), g.channels, g.load, g.load), dtype=np.uint8)
        bad = []
        for k, p in enumerate(positions):
            row = int(self.rows[p])
            try:
                x[k] = decode(self.reader.read(row), g)
            except (BadImage, OSError, DataError) as e:  # DataError: a FIFO, a device, a link outside
                bad.append((k, self.reader.describe(row), str(e)))
        return {"pos": torch.as_tensor(positions, dtype=torch.int64), "x": torch.from_numpy(x), "bad": bad}


def load_images(files: list[Any], contract: dict[str, Any]) -> Tensor:
    """Image files (paths or bytes) -> the model's input batch, decoded and normalised
    exactly as the test split of a run with this input ``contract`` is (same :func:`decode`,
    same :func:`~kdistill.data.contract.to_model_input`). A file that cannot be decoded is
    a :class:`DataError` naming it."""
    geo = Geometry(int(contract["size"]), int(contract["resize"]), int(contract["channels"]))
    px = np.zeros((len(files), geo.channels, geo.load, geo.load), dtype=np.uint8)
    for k, f in enumerate(files):
        try:
            px[k] = decode(f, geo)
        except (BadImage, OSError) as e:
            raise DataError(f"cannot decode image {f}: {e}.") from None
    return to_model_input(torch.from_numpy(px), geo.size, contract["mean"], contract["std"])


def _identity(batch):
    return batch


def _worker_init(_):
    torch.set_num_threads(1)


def decode_batches(reader, rows: np.ndarray, geo: Geometry, batches: list[list[int]], workers: int,
                   pin: bool = False):
    """Decoded batches ``{"pos", "x", "bad"}`` for lists of positions, in that order
    (DataLoader workers when ``workers > 0``)."""
    ds = _Decode(reader, rows, geo)
    if workers <= 0:
        for b in batches:
            yield ds.__getitems__(b)
        return
    dl = torch.utils.data.DataLoader(
        ds, batch_sampler=batches, num_workers=workers, collate_fn=_identity, pin_memory=pin,
        prefetch_factor=4, worker_init_fn=_worker_init, persistent_workers=False,
        # workers' seeds from a generator of their own: a DataLoader otherwise draws them from the
        # global RNG, so a resumed epoch would shift the dropout masks of the steps after it
        generator=torch.Generator().manual_seed(0))
    yield from dl


class ImageSet:
    """A labelled image dataset over a reader (see the module docstring).

    Args:
        reader: ``len``, ``read(i)`` (encoded bytes, a path or a PIL image),
            ``describe(i)`` (the name shown in messages), ``identity()`` (bytes for the
            fingerprint); picklable (DataLoader workers get a copy).
        labels: one label per reader row (int64; -1 = unlabelled).
        num_classes, name, names: the label space, the name in messages, class names.
        geo: decoding geometry.
        mean, std: per-channel normalisation of [0, 1] pixels.
        decode: residency, its memory budget and the decoding workers
            (:class:`~kdistill.data.decode.DecodeOptions`; see the module docstring).
        on_bad: ``"fail"`` or ``"skip"``.
    """

    def __init__(self, reader, labels, num_classes: int, name: str, names: list[str] | None,
                 geo: Geometry, mean, std, decode: DecodeOptions, on_bad: str = "fail",
                 rows: np.ndarray | None = None):
        self.reader = reader
        self.rows = np.arange(len(reader), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self.y = torch.as_tensor(labels, dtype=torch.int64)
        if self.y.shape[0] != len(self.rows):
            raise DataError(f"{name}: {len(self.rows)} images but {self.y.shape[0]} labels.")
        self.num_classes, self.name, self.names, self.geo = int(num_classes), name, names, geo
        self.mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        self.std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if self.mean.numel() != geo.channels or self.std.numel() != geo.channels or (self.std <= 0).any():
            raise DataError(f"{name}: mean and std need {geo.channels} value(s) each (std > 0); "
                            f"got {self.mean.tolist()} and {self.std.tolist()}.")
        if on_bad not in ("fail", "skip"):
            raise DataError(f"{name}: on_bad must be 'fail' or 'skip', got {on_bad!r}.")
        self.decode, self.on_bad = decode, on_bad
        self.resident_mode, self.budget_mb, self.workers = decode.resident, decode.resident_budget_mb, decode.worker_count()
        self._pixels: Tensor | None = None
        self._bad = torch.zeros(len(self.rows), dtype=torch.bool)
        self.skipped: set[str] = set()
        self.warned: set[str] = set()  # shared by the sets of one source: one warning per file and command

    # -- the protocol ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.geo.channels, self.geo.size, self.geo.size)

    @property
    def class_names(self) -> list[str] | None:
        return self.names

    @property
    def normalization(self) -> tuple[Tensor, Tensor]:
        return self.mean, self.std

    @property
    def contract(self) -> dict[str, Any]:
        """How a file becomes this set's model input (:mod:`kdistill.data.contract`)."""
        g = self.geo
        return image_contract(g.channels, g.load, g.size, self.mean.tolist(), self.std.tolist())

    @property
    def resident(self) -> bool:
        if self.resident_mode == "auto":
            g = self.geo
            return len(self) * g.channels * g.load * g.load <= self.budget_mb * 2**20
        return bool(self.resident_mode)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(self.reader.identity())
        h.update(repr((self.geo, self.num_classes, self.mean.tolist(), self.std.tolist())).encode())
        h.update(self.rows.tobytes())
        h.update(self.y.numpy().tobytes())
        return h.hexdigest()[:32]

    def labels(self) -> Tensor:
        """The labels; an image skipped as unreadable (``on_bad: skip``) so far is ``-1``,
        which metrics leave out (it is dropped from scoring, not scored as a black image)."""
        return self.y.masked_fill(self._bad, -1) if bool(self._bad.any()) else self.y

    def pixels(self, positions) -> Tensor:
        """uint8 ``(n, C, load, load)`` for dataset positions (bad images black)."""
        positions = [int(p) for p in positions]
        if self.resident:
            return self._resident_pixels()[positions]
        return next(self._decoded([positions], workers=0))["x"]

    def eval_view(self, u8: Tensor) -> Tensor:
        """uint8 ``load`` squares -> normalised center ``size`` crops (float32)."""
        return to_model_input(u8, self.geo.size, self.mean, self.std)

    def take(self, index: Tensor) -> dict[str, Tensor]:
        index = torch.as_tensor(index, dtype=torch.int64)
        return {"x": self.eval_view(self.pixels(index.tolist())), "y": self.y[index], "index": index}

    def example(self, n: int = 2) -> Tensor:
        return self.take(torch.arange(min(n, len(self))))["x"]

    def batches(self, batch_size: int):
        chunks = [list(range(i, min(i + batch_size, len(self)))) for i in range(0, len(self), batch_size)]
        if self.resident:
            px = self._resident_pixels()
            for c in chunks:
                idx = torch.as_tensor(c)
                yield {"x": self.eval_view(px[idx]), "y": self.y[idx], "index": idx}
            return
        for got in self._decoded(chunks, self.workers):
            idx = got["pos"]
            yield {"x": self.eval_view(got["x"]), "y": self.y[idx], "index": idx}

    def epoch_order(self, seed: int, epoch: int, shuffle: bool, rank: int, world: int, augment, views: int = 0):
        """This rank's positions for ``epoch`` and the epoch's shift/flip parameters (or,
        with ``views`` stored views, each sample's view number)."""
        return epoch_order(len(self), seed, epoch, shuffle, rank, world, augment, dims=4, views=views)

    def samples_per_rank(self, world: int) -> int:
        return -(-len(self) // world)

    def loader(self, batch_size: int, **kwargs) -> ImageLoader:
        return ImageLoader(self, batch_size, **kwargs)

    # -- views -------------------------------------------------------------------------------
    def _view(self, positions: Tensor, name: str | None = None, labels: Tensor | None = None) -> ImageSet:
        positions = torch.as_tensor(positions, dtype=torch.int64)
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.rows = self.rows[positions.numpy()]
        new.y = self.y[positions] if labels is None else labels
        new.name = name or self.name
        new._pixels = None if self._pixels is None else self._pixels[positions]
        new._bad = self._bad[positions]
        new.skipped = set(self.skipped)
        new.warned = self.warned
        return new

    def select(self, index: Tensor) -> ImageSet:
        return self._view(index)

    def relabel(self, lut: Tensor, num_classes: int) -> ImageSet:
        new = self._view(torch.arange(len(self)), labels=torch.as_tensor(lut, dtype=torch.int64)[self.y])
        new.num_classes = int(num_classes)
        return new

    def concat(self, other) -> ImageSet:
        raise DataError(f"{self.name}: transfer sets (data.transfer) work with in-memory array datasets only.")

    def validate(self, require_labels: bool = True) -> None:
        if len(self) == 0:
            raise DataError(f"{self.name}: the dataset is empty.")
        labelled = self.y[self.y >= 0]
        if require_labels and labelled.numel() == 0:
            raise DataError(f"{self.name}: no sample has a label.")
        out = (self.y < -1) | (self.y >= self.num_classes)
        if out.any():
            vals = sorted(set(self.y[out].tolist()))[:5]
            raise DataError(f"{self.name}: labels must lie in [0, {self.num_classes}); found {vals}.")

    # -- decoding ----------------------------------------------------------------------------
    def _decoded(self, batches: list[list[int]], workers: int, pin: bool = False):
        """Decoded batches; bad images handled by ``on_bad`` (black + counted, or an error)."""
        for got in decode_batches(self.reader, self.rows, self.geo, batches, workers, pin):
            for k, what, why in got["bad"]:
                self._note_bad(what, why)
                self._bad[int(got["pos"][k])] = True
            yield got

    def _note_bad(self, what: str, why: str) -> None:
        if self.on_bad == "fail":
            raise DataError(f"{self.name}: cannot decode image {what}: {why}. Remove or replace the file, or set "
                            "data.options.on_bad=skip to skip unreadable images (they are counted).")
        self.skipped.add(what)
        if what not in self.warned:
            self.warned.add(what)
            warnings.warn(f"{self.name}: skipping unreadable image {what} ({why}).", stacklevel=3)

    def _resident_pixels(self) -> Tensor:
        if self._pixels is None:
            g = self.geo
            px = torch.empty((len(self), g.channels, g.load, g.load), dtype=torch.uint8)
            chunk = 256
            batches = [list(range(i, min(i + chunk, len(self)))) for i in range(0, len(self), chunk)]
            for got in self._decoded(batches, self.workers):
                px[got["pos"]] = got["x"]
            self._pixels = px
        return self._pixels


class ImageLoader:
    """Training batches of an :class:`ImageSet` (the protocol's :class:`~kdistill.data.Loader`).

    Arguments as :class:`~kdistill.data.DeviceLoader`; ``augment`` is an
    :class:`~kdistill.data.Augment`, a :class:`~kdistill.data.recipe.Recipe` or its
    :class:`~kdistill.data.recipe.RecipeConfig`. Stored teacher-cache views need an
    in-memory array dataset.
    """

    def __init__(self, data: ImageSet, batch_size: int, shuffle: bool = True, seed: int = 0,
                 device: torch.device | str = "cpu", drop_last: bool = False, augment: Any = None,
                 rank: int = 0, world: int = 1, views: Any = None):
        self.views = views  # a teacher cache's stored views (replace the augmentation)
        self.data, self.batch_size = data, int(batch_size)
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.device = torch.device(device)
        self.rank, self.world = rank, world
        if isinstance(augment, RecipeConfig):
            augment = Recipe(augment, data.num_classes, data.mean, data.std)
        self.recipe = augment if isinstance(augment, Recipe) else None
        self.augment = augment if isinstance(augment, Augment) and augment.active else None
        if views is not None:
            if views.params.dim() != 3 or views.params.shape[0] != len(data):
                raise DataError(f"The teacher cache's views are for {views.params.shape[0]} samples; "
                                f"{data.name} has {len(data)}.")
            self.recipe = self.augment = None
        self.epoch = 0
        self._device_pixels = data._resident_pixels().to(self.device) if data.resident else None

    def __len__(self) -> int:
        n = self.data.samples_per_rank(self.world)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return self.iterate(self.epoch)

    def iterate(self, epoch: int | None = None, start: int = 0):
        """Batches of ``epoch`` from batch number ``start`` on."""
        epoch = self.epoch if epoch is None else epoch
        order, aug = self.data.epoch_order(self.seed, epoch, self.shuffle, self.rank, self.world, self.augment,
                                           views=self.views.count if self.views is not None else 0)
        bs = self.batch_size
        chunks = [order[b * bs : (b + 1) * bs].tolist() for b in range(start, len(self))]
        if self._device_pixels is not None:
            source = ({"pos": torch.as_tensor(c), "x": self._device_pixels[torch.as_tensor(c, device=self.device)]}
                      for c in chunks)
        else:
            source = self.data._decoded(chunks, self.data.workers, pin=self.device.type == "cuda")
        for b, got in enumerate(source, start=start):
            pos = got["pos"]
            x = got["x"].to(self.device, non_blocking=True)
            if self.data.on_bad == "skip":
                keep = ~self.data._bad[pos]
                if not keep.all():
                    pos, x = pos[keep], x[keep.to(x.device)]
                    if len(pos) == 0:
                        continue
            yield self.finish(x, pos, epoch, b, aug)

    def finish(self, u8: Tensor, pos: Tensor, epoch: int, b: int, aug: Tensor | None = None) -> dict[str, Tensor]:
        """uint8 ``load`` squares on the device -> the model's training batch."""
        d = self.data
        y = d.y[pos].to(self.device)
        index = pos.to(self.device)
        if self.recipe is not None:
            x = u8.float().div_(255.0)
            out = self.recipe(x, y, key=(self.seed, epoch, b, self.rank), size=(d.geo.size, d.geo.size))
            return {**out, "y": y, "index": index}
        x = d.eval_view(u8)
        if self.views is not None:  # the view this sample shows this epoch, as the cache stored it
            view = aug[pos]
            x = self.views.augment.apply(x, self.views.params[pos, view].to(self.device))
            return {"x": x, "y": y, "index": index, "view": view.to(self.device)}
        if self.augment is not None:
            x = self.augment.apply(x, aug[pos].to(self.device))
        return {"x": x, "y": y, "index": index}


# -- building a source's splits -----------------------------------------------------------------
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def probe(raw: Any) -> tuple[int, int, int]:
    """``(width, height, channels)`` of one encoded image (header only)."""
    Image, _ = _need_pillow()
    try:
        raw = _encoded(raw, Image)
        img = Image.open(io.BytesIO(bytes(raw))) if isinstance(raw, (bytes, bytearray, memoryview)) else raw
        channels = 1 if img.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
        return img.size[0], img.size[1], channels
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError, DataError) as e:
        raise BadImage(_why(e, raw)) from None


def _why(e: BaseException, raw: Any) -> str:
    """Why an image could not be read, without Pillow's ``<_io.BytesIO object at 0x...>``."""
    if isinstance(raw, (bytes, bytearray, memoryview)) and len(raw) == 0:
        return "the file is empty"
    why = str(e) or type(e).__name__
    if why.startswith("cannot identify image file"):
        return "not an image format Pillow can read"
    return why


def _encoded(raw: Any, Image) -> Any:
    """Encoded bytes (or a PIL image) from what a reader gave: a path is read through the
    safe reader (a regular file of at most 256 MiB: no FIFO, no ``/dev/zero``); anything
    else (an int, a list of floats in a parquet column) is not an image."""
    if isinstance(raw, (str, Path)):
        return read_bytes(raw, "image")
    if isinstance(raw, (bytes, bytearray, memoryview)) or isinstance(raw, Image.Image):
        return raw
    raise BadImage(f"the cell holds {type(raw).__name__}, not an encoded image or a path")


def probe_majority(name: str, samples: list[Any], channels: int | None) -> tuple[int, int, int]:
    """``(width, height, channels)`` from a few training images: the size of the first
    readable one, the channel count most of them have (said in a warning when they
    disagree, unless ``channels`` is configured). Unreadable ones are passed over; none
    readable is a :class:`DataError`."""
    got, why = [], ""
    for raw in samples:
        try:
            got.append(probe(raw))
        except BadImage as e:
            why = why or str(e)
    if not got:
        raise DataError(f"{name}: cannot read the first training image ({why}).")
    counts = {c: sum(g[2] == c for g in got) for c in (1, 3)}
    majority = 3 if counts[3] >= counts[1] else 1
    if channels is None and counts[1] and counts[3]:
        warnings.warn(f"{name}: of {len(got)} training images probed, {counts[3]} are colour and {counts[1]} grey; "
                      f"using {majority} channel(s) for all (set data.options.channels to choose).", stacklevel=3)
    return got[0][0], got[0][1], majority


def channel_stats(batches, channels: int, size: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of [0, 1] pixels of the ``size`` center crops of decoded
    uint8 ``(N, C, H, W)`` batches (every image source's ``mean: auto``)."""
    total = torch.zeros(channels, dtype=torch.float64)
    sq = torch.zeros_like(total)
    count = 0
    for x in batches:
        x = center_crop(x.double() / 255.0, (size, size))
        total += x.sum((0, 2, 3))
        sq += (x * x).sum((0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return [round(float(v), 4) for v in mean], [round(float(v), 4) for v in std.clamp_min(1e-3)]


def _stats(ds: ImageSet, samples: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of [0, 1] pixels of the center crops of up to ``samples``
    evenly spaced images."""
    n = len(ds)
    pos = np.unique(np.linspace(0, n - 1, min(n, samples)).round().astype(np.int64)).tolist()
    chunks = [pos[i : i + 256] for i in range(0, len(pos), 256)]
    return channel_stats((got["x"] for got in ds._decoded(chunks, ds.workers)), ds.geo.channels, ds.geo.size)


def image_splits(name: str, parts: dict[str, tuple[Any, Tensor]], num_classes: int, names: list[str] | None,
                 first: Any, size: int | None = None, resize: int | None = None, channels: int | None = None,
                 mean: Any = "auto", std: Any = None, decode: DecodeOptions = DecodeOptions(), on_bad: str = "fail",
                 stats_samples: int = 1000, cls: type = ImageSet):
    """The :class:`~kdistill.data.DataSplits` of an image source from its readers (``cls``:
    the :class:`ImageSet` class to make).

    ``parts``: ``{"train": (reader, labels), "test": ..., "val": ...}``; ``first``: one
    encoded training image (its size and mode are the defaults of ``size`` and
    ``channels``). ``mean``: ``"auto"`` (measured on ``stats_samples`` training images),
    ``"imagenet"``, or numbers with ``std``.
    """
    from .arrays import DataSplits

    if size is None or channels is None:
        w, h, c = probe_majority(name, first if isinstance(first, list) else [first], channels)
        if size is None:
            size = min(w, h)
            resize = resize or size
        channels = channels or c
    resize = resize or int(round(size / 0.875))  # 224 -> 256, the usual eval resize
    geo = Geometry(int(size), int(resize), int(channels))
    decode = replace(decode, workers=decode.worker_count())
    common = dict(geo=geo, decode=decode, on_bad=on_bad)
    warned: set[str] = set()
    if isinstance(mean, str):
        if mean == "imagenet":
            if channels != 3:
                raise DataError(f"{name}: mean 'imagenet' is for 3 channels; give mean and std for grey images.")
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        elif mean == "auto":
            probe_set = ImageSet(*parts["train"], num_classes, name, names, mean=[0.0] * channels,
                                 std=[1.0] * channels, **{**common, "decode": replace(decode, resident=False)})
            probe_set.warned = warned
            mean, std = _stats(probe_set, stats_samples)
        else:
            raise DataError(f"{name}: mean must be 'auto', 'imagenet' or numbers, got {mean!r}.")
    elif std is None:
        raise DataError(f"{name}: give std together with mean.")
    mean = [float(mean)] * channels if isinstance(mean, (int, float)) else list(mean)
    std = [float(std)] * channels if isinstance(std, (int, float)) else list(std)
    sets = {k: cls(r, y, num_classes, name if k == "train" else f"{name}-{k}", names, mean=mean, std=std,
                        **common) for k, (r, y) in parts.items()}
    for s in sets.values():
        s.warned = warned
    return DataSplits(sets["train"], sets["test"], sets.get("val"))


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(keep, held_out)`` rows: ``fraction`` of every class held out, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    keep, out = [], []
    for c in np.unique(labels):
        rows = np.nonzero(labels == c)[0]
        rows = rows[rng.permutation(len(rows))]
        k = int(round(len(rows) * fraction))
        out.append(rows[:k])
        keep.append(rows[k:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(out))
