"""``hf`` with ``streaming: true``: local parquet / arrow / imagefolder files read as a
Hugging Face ``IterableDataset`` (``datasets.load_dataset(..., streaming=True)``): no Arrow
copy of the data is written to the cache and nothing is downloaded.

Sample numbers: when the source opens, every shard of the stream (a file, for parquet and
arrow) is read once for its labels alone; that pass gives the dataset's length, its labels
and each shard's first row number. A row's ``index`` is then its position in file order
(shard after shard), the order ``batches()`` yields and teacher caches key on, whatever
the epoch's order.

Epoch order (training): ``IterableDataset.shuffle(seed, buffer_size=shuffle_buffer)`` with
``set_epoch(epoch)``: the shards are permuted and rows are drawn at random from a buffer of
``shuffle_buffer`` rows, so the order is a function of ``(seed, epoch)`` (and the buffer
size). A buffer smaller than the dataset mixes rows only locally: a row moves at most about
a buffer's length from where its shard puts it. Process ``rank`` of ``world`` takes every
``world``-th row of that one stream (every process reads the rows' bytes; each decodes only
its own); a rank one row short repeats its first row, as DistributedSampler pads.

Resume: ``iterate(epoch, start)`` replays the same stream and passes over (without decoding)
the ``start * batch_size`` rows the rank had consumed, so the remaining batches are the
ones the uninterrupted run saw. Decoding and augmentation are those of
:mod:`kdistill.data.images`: the same row gives the same tensors as the map-style source,
and shift/flip parameters are drawn per sample from ``(seed, epoch)`` as there.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from .decode import DecodeOptions
from .images import BadImage, ImageLoader, ImageSet, channel_stats, decode, image_splits, probe
from .loaders import epoch_order

INDEX = "__kdistill_index"


def _raw(v) -> Any:
    """Encoded bytes (or a path) of one image cell read with ``Image(decode=False)``."""
    if isinstance(v, dict):
        if v.get("bytes") is not None:
            return v["bytes"]
        if v.get("path"):
            return v["path"]
        return None
    return v


class StreamSource:
    """One split as a stream: its shards (each numbering its rows from the shard's first row
    number), the labels, and the files (for the fingerprint). Streams are iterated in the
    main process; decoding threads get ``(index, bytes)`` rows."""

    def __init__(self, datasets, ids, image_column: str, label_column: str, name: str, files: list[str],
                 labels_only=None):
        self.image_column, self.label_column, self.name, self.files = image_column, label_column, name, files
        feat = ids.features[image_column] if ids.features else None
        if isinstance(feat, datasets.Image) and feat.decode:
            ids = ids.cast_column(image_column, datasets.Image(decode=False))
        ids = ids.select_columns([image_column, label_column])
        # the label pass reads the label column alone where the format can (parquet: a
        # stream of the same files, so of the same shards, with columns=[label])
        if labels_only is None or labels_only.num_shards != ids.num_shards:
            labels_only = ids.select_columns([label_column])
        self.shards, labels, starts = [], [], []
        n = 0
        for i in range(ids.num_shards):
            shard = ids.shard(num_shards=ids.num_shards, index=i)
            ys = [row[label_column] for row in labels_only.shard(num_shards=ids.num_shards, index=i)]
            # with_indices counts the rows of this one shard, in its order, wherever the
            # epoch's shuffle puts the shard: first row + count is the row's dataset number
            self.shards.append(shard.map(_number, with_indices=True, fn_kwargs={"first": n}))
            starts.append(n)
            labels += ys
            n += len(ys)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.labels = labels
        self._datasets = datasets

    def __len__(self) -> int:
        return len(self.labels)

    def stream(self, seed: int | None = None, epoch: int = 0, buffer: int = 1000):
        """Rows ``{image, label, INDEX}``: file order, or shuffled from ``(seed, epoch)``."""
        ids = self._datasets.concatenate_datasets(self.shards)
        if seed is not None:
            # one shard at a time into the buffer (datasets >= 5 can feed it from several
            # shards in threads; parquet readers then sleep 5 s at every stream's end)
            kw = {"max_buffer_input_shards": 1} if "max_buffer_input_shards" in _shuffle_args() else {}
            ids = ids.shuffle(seed=int(seed), buffer_size=int(buffer), **kw)
            ids.set_epoch(int(epoch))
        return ids

    def describe(self, i: int) -> str:
        return f"row {i} of {self.image_column!r} in {self.name}"

    def identity(self) -> bytes:
        h = hashlib.sha256()
        for f in self.files:
            h.update(f"{os.path.basename(f)}\t{os.path.getsize(f) if os.path.exists(f) else -1}\n".encode())
        h.update(self.starts.tobytes())
        return h.digest()


@functools.cache
def _shuffle_args() -> frozenset[str]:
    from datasets import IterableDataset

    return frozenset(inspect.signature(IterableDataset.shuffle).parameters)


def _chunked(rows, n: int):
    """Lists of ``n`` consecutive items of the iterator ``rows`` (the last may be shorter)."""
    while got := list(islice(rows, n)):
        yield got


def _number(row, i, first):
    return {INDEX: first + i}


def _decode_rows(rows: list[tuple[int, Any]], geo) -> tuple[Tensor, Tensor, list]:
    """``(pos, uint8 pixels, bad)`` of ``(index, raw)`` rows (bad images black)."""
    x = np.zeros((len(rows), geo.channels, geo.load, geo.load), dtype=np.uint8)
    bad = []
    for k, (_, raw) in enumerate(rows):
        try:
            if raw is None:
                raise BadImage("the image cell is empty")
            x[k] = decode(raw, geo)
        except (BadImage, OSError) as e:
            bad.append((k, str(e)))
    return torch.as_tensor([i for i, _ in rows], dtype=torch.int64), torch.from_numpy(x), bad


class HFStreamSet(ImageSet):
    """An :class:`ImageSet` over a :class:`StreamSource` (no random access: rows are read in
    stream order; ``take`` reads the stream until it has every asked-for row)."""

    buffer = 1000

    @property
    def resident(self) -> bool:
        return False

    def _rows(self, chunk: int, seed: int | None = None, epoch: int = 0):
        """Chunks of ``(index, raw)`` rows of the stream."""
        src: StreamSource = self.reader
        return _chunked(((int(r[INDEX]), _raw(r[src.image_column])) for r in src.stream(seed, epoch, self.buffer)),
                        chunk)

    def _decode(self, chunks, workers: int):
        """Decoded ``(pos, x)`` per chunk, in order (``workers`` threads decode ahead)."""
        def one(rows):
            pos, x, bad = _decode_rows(rows, self.geo)
            for k, why in bad:
                self._note_bad(self.reader.describe(int(pos[k])), why)
                self._bad[int(pos[k])] = True
            return pos, x

        if workers <= 0:
            for c in chunks:
                yield one(c)
            return
        with ThreadPoolExecutor(workers) as pool:
            ahead = []
            for c in chunks:
                ahead.append(pool.submit(one, c))
                if len(ahead) > 2 * workers:
                    yield ahead.pop(0).result()
            for f in ahead:
                yield f.result()

    def pixels(self, positions) -> Tensor:
        want = [int(p) for p in positions]
        found: dict[int, Tensor] = {}
        need = set(want)
        for pos, x in self._decode(([r for r in rows if r[0] in need] for rows in self._rows(256)), 0):
            for k, p in enumerate(pos.tolist()):
                found[p] = x[k]
            if len(found) == len(need):
                break
        missing = need - set(found)
        if missing:
            raise DataError(f"{self.name}: no rows {sorted(missing)[:5]} (the dataset has {len(self)}).")
        g = self.geo
        return torch.stack([found[p] for p in want]) if want else torch.zeros((0, g.channels, g.load, g.load),
                                                                                dtype=torch.uint8)

    def batches(self, batch_size: int):
        for pos, x in self._decode(self._rows(batch_size), self.workers):
            yield {"x": self.eval_view(x), "y": self.y[pos], "index": pos}

    def _resident_pixels(self) -> Tensor:
        raise DataError(f"{self.name}: streaming reads the images per batch; set data.resident to false or auto.")

    def loader(self, batch_size: int, **kwargs) -> StreamLoader:
        return StreamLoader(self, batch_size, **kwargs)

    def _no(self, what: str):
        raise DataError(f"{self.name}: {what} needs random access, which streaming does not give; "
                        "drop data.options.streaming to read the files map-style (memory-mapped Arrow).")

    def select(self, index):
        self._no("selecting samples (data.subset, data.val_split, specialists)")

    def subset(self, n: int, seed: int = 0):
        if n >= len(self):
            return self
        self._no("data.subset")

    def split(self, fraction: float, seed: int = 0):
        self._no("data.val_split")


class StreamLoader(ImageLoader):
    """Training batches of an :class:`HFStreamSet` (see the module docstring)."""

    def iterate(self, epoch: int | None = None, start: int = 0):
        """Batches of ``epoch`` from batch number ``start`` on."""
        epoch = self.epoch if epoch is None else epoch
        d: HFStreamSet = self.data
        # per-sample shift/flip (or stored-view) parameters as every loader draws them
        _, aug = epoch_order(len(d), self.seed, epoch, self.shuffle, 0, 1, self.augment, dims=4,
                             views=self.views.count if self.views is not None else 0)
        per, bs, n_batches = d.samples_per_rank(self.world), self.batch_size, len(self)
        src: StreamSource = d.reader
        rows = ((int(r[INDEX]), _raw(r[src.image_column]))
                for r in src.stream(self.seed if self.shuffle else None, epoch, d.buffer))
        mine = islice(rows, self.rank, None, self.world)

        def padded():
            first, count = None, 0
            for r in mine:
                first = r if first is None else first
                count += 1
                yield r
            if first is not None and count < per:
                yield from [first] * (per - count)

        it = islice(padded(), start * bs, n_batches * bs)  # the consumed rows pass undecoded
        for b, (pos, x) in enumerate(d._decode(_chunked(it, bs), d.workers), start=start):
            x = x.to(self.device, non_blocking=True)
            if d.on_bad == "skip":
                keep = ~d._bad[pos]
                if not keep.all():
                    pos, x = pos[keep], x[keep.to(x.device)]
                    if len(pos) == 0:
                        continue
            yield self.finish(x, pos, epoch, b, aug)


def _stats(ds: HFStreamSet, samples: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the center crops of the stream's first ``samples`` images
    (the map-style source measures evenly spaced ones: a stream has no random access)."""
    rows = list(islice((r for chunk in ds._rows(256) for r in chunk), samples))
    chunks = [rows[i : i + 256] for i in range(0, len(rows), 256)]
    return channel_stats((x for _, x in ds._decode(chunks, ds.workers)), ds.geo.channels, ds.geo.size)


def open_streaming(datasets, base: Path, fmt: str | None, data_files, image_column: str, label_column: str,
                   train_split: str, test_split_name: str | None, shuffle_buffer: int, size, resize, channels,
                   mean, std, resident, workers, on_bad, stats_samples):
    """The :class:`~kdistill.data.DataSplits` of a streamed ``hf`` source."""
    if resident is True:
        raise DataError("hf: streaming reads images per batch; data.resident true needs streaming off.")
    if int(shuffle_buffer) < 1:
        raise DataError(f"hf: shuffle_buffer must be at least 1, got {shuffle_buffer}.")
    fmt, data_files = _stream_format(base, fmt, data_files)
    kw = dict(streaming=True, download_config=datasets.DownloadConfig(local_files_only=True))
    dd, tname = _stream_splits(datasets, base, fmt, data_files, train_split, test_split_name, kw)
    names = _stream_columns(datasets, base, dd[train_split], image_column, label_column)

    def files_of(split):
        if fmt == "imagefolder":
            return sorted(str(p) for p in (base / split).rglob("*") if p.is_file())
        got = data_files.get(split, []) if isinstance(data_files, dict) else data_files
        return [got] if isinstance(got, str) else list(got)

    labels_only = {}
    if fmt == "parquet":
        try:
            labels_only = datasets.load_dataset(fmt, data_files=data_files, columns=[label_column], **kw)
        except (FileNotFoundError, ValueError, OSError):
            labels_only = {}  # read the labels from the full rows
    sources = {k: StreamSource(datasets, dd[split], image_column, label_column, f"{base.name}/{split}",
                               files_of(split), labels_only.get(split))
               for k, split in (("train", train_split), ("test", tname))}
    if len(sources["train"]) == 0:
        raise DataError(f"hf: the {train_split!r} split of {base} is empty.")
    labels, num_classes = _stream_labels(base, sources, names, label_column)
    first = _raw(next(iter(sources["train"].stream()))[image_column])
    if channels is None:
        try:
            channels = probe(first)[2]
        except BadImage as e:
            raise DataError(f"hf: cannot read the first training image ({e}).") from None
    auto = mean is None or mean == "auto"
    parts = {k: (s, torch.from_numpy(labels[k])) for k, s in sources.items()}
    splits = image_splits(f"hf:{base.name}", parts, num_classes, names, first=first, size=size, resize=resize,
                          channels=channels, mean=[0.0] * channels if auto else mean,
                          std=[1.0] * channels if auto else std, decode=DecodeOptions(resident=False, workers=workers), on_bad=on_bad,
                          cls=HFStreamSet)
    for part in (splits.train, splits.test):
        part.buffer = int(shuffle_buffer)
    if auto:
        m, s = _stats(splits.train, stats_samples)
        for part in (splits.train, splits.test):
            part.mean, part.std = torch.tensor(m), torch.tensor(s)
    return splits


def _stream_format(base: Path, fmt: str | None, data_files) -> tuple[str, Any]:
    """The file format to stream (guessed from the files when unset) and the files per split."""
    if (base / "dataset_dict.json").is_file() or (base / "state.json").is_file() or fmt == "disk":
        raise DataError(f"hf: {base} is a save_to_disk folder: streaming reads parquet, arrow or imagefolder "
                        "files. A save_to_disk folder is already memory-mapped Arrow (nothing is copied): "
                        "drop data.options.streaming.")
    if fmt is None:
        fmt = "parquet" if list(base.rglob("*.parquet")) else "arrow" if list(base.rglob("*.arrow")) else None
        if fmt is None:
            raise DataError(f"hf: no .parquet or .arrow files under {base}; for class sub-folders of images set "
                            "data.options.format: imagefolder.")
    if fmt not in ("parquet", "arrow", "imagefolder"):
        raise DataError(f"hf: streaming reads format parquet, arrow or imagefolder, got {fmt!r}.")
    if data_files is None and fmt != "imagefolder":
        data_files = {}
        for f in sorted(str(p) for p in base.rglob(f"*.{fmt}")):
            stem = Path(f).name.lower()
            split = next((s for s in ("train", "test", "validation", "val") if stem.startswith(s)), "train")
            data_files.setdefault("validation" if split == "val" else split, []).append(f)
    return fmt, data_files


def _stream_splits(datasets, base: Path, fmt: str, data_files, train_split: str, test_split_name: str | None,
                   kw: dict) -> tuple[Any, str]:
    """The streamed splits and the name of the test split."""
    try:
        if fmt == "imagefolder":
            dd = datasets.load_dataset("imagefolder", data_dir=str(base), **kw)
        else:
            dd = datasets.load_dataset(fmt, data_files=data_files, **kw)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DataError(f"hf: cannot open {base} as {fmt} files for streaming: {e}") from None
    if isinstance(dd, datasets.IterableDataset):
        dd = datasets.IterableDatasetDict({train_split: dd})
    if train_split not in dd:
        raise DataError(f"hf: no split {train_split!r} in {base}; it has {list(dd)}. Set data.options.train_split.")
    tname = test_split_name or next((s for s in ("test", "validation", "val") if s in dd and s != train_split), None)
    if tname is None or tname not in dd:
        raise DataError(f"hf: streaming needs a test split among the files ({base} has {list(dd)}): name test "
                        "files test*.parquet / test*.arrow (or a test/ folder), give data_files: {train: ..., "
                        "test: ...}, or drop streaming to hold out test_split per class.")
    return dd, tname


def _stream_columns(datasets, base: Path, train, image_column: str, label_column: str) -> list[str] | None:
    """Check the columns exist and the labels are integers; the class names of a ClassLabel."""
    cols = list(train.features) if train.features else None
    for col in (image_column, label_column):
        if cols is not None and col not in cols:
            raise DataError(f"hf: {base} has no column {col!r}; columns are {cols}. "
                            "Set data.options.image_column / label_column.")
    feat = train.features[label_column] if train.features else None
    if isinstance(feat, datasets.ClassLabel):
        return list(feat.names)
    if str(getattr(feat, "dtype", "int64"))[:3] not in ("int", "uin"):
        raise DataError(f"hf: column {label_column!r} must hold integer labels, got {feat.dtype}.")
    return None


def _stream_labels(base: Path, sources: dict, names, label_column: str) -> tuple[dict[str, np.ndarray], int]:
    """The labels per split and the class count, checked (``-1``: unlabelled)."""
    labels = {k: np.asarray(s.labels, dtype=np.int64) for k, s in sources.items()}
    top = max(int(y.max(initial=-1)) for y in labels.values())
    num_classes = len(names) if names else top + 1
    for k, y in labels.items():
        bad = (y < -1) | (y >= num_classes)  # -1: unlabelled
        if bad.any():
            raise DataError(f"hf: column {label_column!r} of the {k} split holds labels {sorted(set(y[bad].tolist()))[:5]} "
                            f"outside [0, {num_classes}) (the class names: {names}).")
    if num_classes < 2:
        raise DataError(f"hf: {base} has {num_classes} class(es); classification needs at least two.")
    return labels, num_classes
