"""``hf``: a Hugging Face ``datasets`` dataset from local files only (nothing downloaded).

``data.root`` is one of:

* a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
* a folder of ``.parquet`` or ``.arrow`` files (``format: parquet`` / ``arrow``), split by
  file name (``train*``, ``test*``, ``val*``) when ``data_files`` is not given;
* a folder of class sub-folders read by the ``imagefolder`` builder (``format: imagefolder``).

Columns: ``image_column`` (an ``Image`` feature, or a struct of ``bytes``/``path``) and
``label_column`` (a ``ClassLabel`` gives the class names; plain integers are fine).
Arrow tables are memory-mapped, so a dataset larger than RAM is read from disk: images
are decoded per batch in the loader's workers exactly as for ``imagefolder``, with the
same order, resume and sharding (see :mod:`kdistill.data.images`). A dataset without a
test split is split ``test_split`` per class.

``streaming: true`` reads parquet/arrow/imagefolder files as a ``datasets.IterableDataset``
instead (no Arrow copy in the cache): see :mod:`kdistill.data.hfstream`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .datasets import register_dataset
from .decode import DecodeOptions, decodes_images
from .hfstream import open_streaming
from .images import image_splits, stratified_split


def _need_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("The hf source needs the datasets package: pip install 'kdistill[images]'.") from None
    return datasets


class HFReader:
    """Encoded image bytes of rows of a ``datasets.Dataset`` (picklable: Arrow files are
    memory-mapped and pickled by reference)."""

    def __init__(self, ds, column: str, rows: np.ndarray | None = None):
        datasets = _need_datasets()
        feat = ds.features[column]
        if isinstance(feat, datasets.Image) and feat.decode:
            ds = ds.cast_column(column, datasets.Image(decode=False))
        self.ds, self.column = ds, column
        self.rows = np.arange(len(ds), dtype=np.int64) if rows is None else rows

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, i: int):
        v = self.ds[int(self.rows[i])][self.column]
        if isinstance(v, dict):
            if v.get("bytes") is not None:
                return v["bytes"]
            if v.get("path"):
                return v["path"]
        if v is None:
            raise OSError("the image cell is empty")
        return v

    def describe(self, i: int) -> str:
        return f"row {int(self.rows[i])} of {self.column!r}"

    def identity(self) -> bytes:
        h = hashlib.sha256(str(getattr(self.ds, "_fingerprint", "")).encode())
        h.update(self.rows.tobytes())
        return h.digest()

    def subset(self, rows: np.ndarray) -> HFReader:
        return HFReader(self.ds, self.column, self.rows[rows])


def _open(base: Path, fmt: str | None, data_files):
    datasets = _need_datasets()
    if fmt is None:
        if (base / "dataset_dict.json").is_file() or (base / "dataset_info.json").is_file() or \
                (base / "state.json").is_file():
            fmt = "disk"
        elif list(base.glob("*.parquet")) or list(base.glob("*/*.parquet")):
            fmt = "parquet"
        elif list(base.glob("*.arrow")):
            fmt = "arrow"
        else:
            raise DataError(f"hf: {base} is neither a save_to_disk folder nor a folder of .parquet/.arrow files; "
                            "set data.options.format (disk, parquet, arrow, imagefolder).")
    try:
        if fmt == "disk":
            return datasets.load_from_disk(str(base))
        if fmt not in ("parquet", "arrow", "imagefolder"):
            raise DataError(f"hf: format must be disk, parquet, arrow or imagefolder, got {fmt!r}.")
        if data_files is None and fmt != "imagefolder":
            files = sorted(str(p) for p in base.rglob(f"*.{fmt}"))
            data_files = {}
            for f in files:
                stem = Path(f).name.lower()
                split = next((s for s in ("train", "test", "validation", "val") if stem.startswith(s)), "train")
                data_files.setdefault("validation" if split == "val" else split, []).append(f)
        if fmt == "imagefolder":
            return datasets.load_dataset("imagefolder", data_dir=str(base))
        return datasets.load_dataset(fmt, data_files=data_files)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DataError(f"hf: cannot open {base} as a {fmt} dataset: {e}") from None


@register_dataset("hf")
@decodes_images
def hf(root: str | None = None, format: str | None = None, data_files=None, image_column: str = "image",
       label_column: str = "label", train_split: str = "train", test_split_name: str | None = None,
       test_split: float = 0.2, split_seed: int = 0, size: int | None = None, resize: int | None = None,
       channels: int | None = None, mean=None, std=None, decode: DecodeOptions = DecodeOptions(),
       on_bad: str = "fail", stats_samples: int = 1000, streaming: bool = False, shuffle_buffer: int = 1000):
    """A local Hugging Face dataset (see the module docstring); image options as ``imagefolder``.

    Args:
        root: the dataset folder (``data.root``).
        format: ``disk`` (save_to_disk), ``parquet``, ``arrow`` or ``imagefolder``; guessed when unset.
        data_files: for parquet/arrow: a file, a list, or ``{split: files}``.
        image_column, label_column: the columns to read.
        train_split: the training split's name; ``test_split_name``: the test split's (default
            ``test``, else ``validation``); without one, ``test_split`` of each class is held out.
        streaming: read parquet/arrow/imagefolder files as an ``IterableDataset`` (no Arrow
            copy in the cache; see :mod:`kdistill.data.hfstream`); needs a test split.
        shuffle_buffer: rows in the streamed shuffle's buffer.
    """
    datasets = _need_datasets()
    if not root or not Path(root).expanduser().exists():
        raise DataError(f"hf: data.root {root!r} does not exist; point it at a local dataset folder.")
    base = Path(root).expanduser()
    if streaming:
        return open_streaming(datasets, base, format, data_files, image_column, label_column, train_split,
                              test_split_name, shuffle_buffer, size, resize, channels, mean, std, decode.resident,
                              decode.workers,
                              on_bad, stats_samples)
    dd = _open(base, format, data_files)
    if isinstance(dd, datasets.Dataset):
        dd = datasets.DatasetDict({train_split: dd})
    if train_split not in dd:
        raise DataError(f"hf: no split {train_split!r} in {base}; it has {list(dd)}. Set data.options.train_split.")
    train = dd[train_split]
    for col in (image_column, label_column):
        if col not in train.column_names:
            raise DataError(f"hf: {base} has no column {col!r}; columns are {train.column_names}. "
                            "Set data.options.image_column / label_column.")
    feat = train.features[label_column]
    names = list(feat.names) if isinstance(feat, datasets.ClassLabel) else None
    tname = test_split_name or next((s for s in ("test", "validation", "val") if s in dd and s != train_split), None)

    def part(ds):
        labels = np.asarray(ds[label_column])
        if labels.dtype.kind not in "iu":
            raise DataError(f"hf: column {label_column!r} must hold integer labels, got {labels.dtype}.")
        return HFReader(ds, image_column), labels.astype(np.int64)

    parts = {}
    reader, labels = part(train)
    if tname is not None:
        if tname not in dd:
            raise DataError(f"hf: no split {tname!r} in {base}; it has {list(dd)}.")
        parts["train"] = (reader, labels)
        parts["test"] = part(dd[tname])
    else:
        keep, out = stratified_split(labels, test_split, split_seed)
        parts["train"] = (reader.subset(keep), labels[keep])
        parts["test"] = (reader.subset(out), labels[out])
    top = max(int(y.max(initial=-1)) for _, y in parts.values())
    num_classes = len(names) if names else top + 1
    if num_classes < 2:
        raise DataError(f"hf: {base} has {num_classes} class(es); classification needs at least two.")
    parts = {k: (r, torch.from_numpy(y)) for k, (r, y) in parts.items()}
    return image_splits(f"hf:{base.name}", parts, num_classes, names, first=parts["train"][0].read(0),
                        size=size, resize=resize, channels=channels, mean="auto" if mean is None else mean, std=std,
                        decode=decode, on_bad=on_bad, stats_samples=stats_samples)
