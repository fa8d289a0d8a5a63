"""``imagefolder``: class sub-folders of images (the torchvision ImageFolder layout).

Two layouts are read::

    root/train/<class>/*.png   root/test/<class>/*.jpg   (optional root/val/<class>/...)
    root/<class>/*.jpeg        (a held-out test split of ``test_split`` per class)

Classes are the sorted sub-folder names of the training folder (label = position); a
test or validation folder may hold a subset of them. Files ending in .jpg, .jpeg, .png,
.webp, .bmp or .gif (any case) count, searched recursively in each class folder; others
and hidden files are ignored. Decoding, residency, normalisation and bad files: see
:mod:`kdistill.data.images`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..safe_read import read_bytes
from .datasets import register_dataset
from .decode import DecodeOptions, decodes_images
from .images import image_splits, stratified_split

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


class FolderReader:
    """Encoded bytes of files under ``root`` (picklable: the list of relative paths)."""

    def __init__(self, root: Path, files: list[str], sizes: list[int], links_outside: bool = False):
        self.root, self.files, self.sizes = str(root), files, sizes
        self.links_outside = links_outside

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int) -> bytes:
        """The file's bytes: a regular file of at most 256 MiB (a FIFO or a link to a device
        is a bad image, not a hang), inside ``root`` unless ``links_outside``."""
        return read_bytes(os.path.join(self.root, self.files[i]), "image",
                          root=None if self.links_outside else self.root)

    def describe(self, i: int) -> str:
        return self.files[i]

    def identity(self) -> bytes:
        """Relative paths and byte sizes (a changed file of the same size is not noticed)."""
        h = hashlib.sha256()
        for f, s in zip(self.files, self.sizes):
            h.update(f"{f}\t{s}\n".encode())
        return h.digest()

    def subset(self, rows: np.ndarray) -> FolderReader:
        return FolderReader(Path(self.root), [self.files[i] for i in rows], [self.sizes[i] for i in rows],
                            self.links_outside)


def _images_in(folder: Path) -> list[tuple[str, int]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(EXTENSIONS):
                p = os.path.join(dirpath, name)
                out.append((p, os.stat(p).st_size))
    return out


def scan(root: Path, folder: Path, classes: list[str] | None = None,
         links_outside: bool = False) -> tuple[FolderReader, np.ndarray, list[str]]:
    """The images of ``folder``'s class sub-folders, their labels and the class names."""
    if not folder.is_dir():
        raise DataError(f"imagefolder: {folder} is not a folder.")
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise DataError(f"imagefolder: no class sub-folders in {folder}; expected {folder}/<class>/<image>.png "
                        f"(or {folder}/train/<class>/... and {folder}/test/<class>/...).")
    names = classes if classes is not None else found
    unknown = [c for c in found if c not in names]
    if unknown:
        raise DataError(f"imagefolder: {folder} has classes {unknown[:5]} that the training folder lacks.")
    files, sizes, labels = [], [], []
    for c in found:
        imgs = _images_in(folder / c)
        if not imgs:
            raise DataError(f"imagefolder: class folder {folder / c} holds no images ({', '.join(EXTENSIONS)}); "
                            "remove it or add images.")
        for p, s in imgs:
            files.append(os.path.relpath(p, root))
            sizes.append(s)
            labels.append(names.index(c))
    return FolderReader(root, files, sizes, links_outside), np.asarray(labels, dtype=np.int64), names


@register_dataset("imagefolder")
@decodes_images
def imagefolder(root: str | None = None, train_dir: str = "train", test_dir: str | None = None,
                val_dir: str | None = None, test_split: float = 0.2, split_seed: int = 0, size: int | None = None,
                resize: int | None = None, channels: int | None = None, mean=None, std=None,
                decode: DecodeOptions = DecodeOptions(), on_bad: str = "fail", stats_samples: int = 1000,
                links_outside: bool = False):
    """Images in class sub-folders (see the module docstring).

    Args:
        root: the dataset folder (``data.root``).
        train_dir, test_dir, val_dir: sub-folders of the splits (``test_dir`` defaults to
            ``test``, else ``val``); without ``train_dir`` the root's class folders are
            split ``test_split`` per class with ``split_seed``.
        size: the model's input side (eval center crop, RandomResizedCrop output); default:
            the first training image's short side.
        resize: images are decoded with the short side resized to this and center-cropped
            square (default ``size / 0.875``, 256 for 224; ``size`` when ``size`` is not given).
        channels: 1 or 3 (default: the first image's).
        mean, std: normalisation per channel (numbers), ``"imagenet"``, or ``"auto"``
            (the default: measured on ``stats_samples`` training images).
        on_bad: ``fail`` or ``skip`` unreadable images.
        links_outside: follow symbolic links to files outside ``root`` (by default such a
            link is an unreadable image: a shared folder cannot point kdistill elsewhere).
    """
    if not root:
        raise DataError("imagefolder: set data.root to the folder of class sub-folders.")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"imagefolder: data.root {str(base)!r} is not a folder.")
    parts = {}
    if (base / train_dir).is_dir():
        reader, labels, names = scan(base, base / train_dir, links_outside=links_outside)
        parts["train"] = (reader, labels)
        tdir = test_dir or next((d for d in ("test", "val") if (base / d).is_dir()), None)
        if tdir is None or not (base / tdir).is_dir():
            raise DataError(f"imagefolder: {base / train_dir} exists but no test folder; add {base}/test/<class>/... "
                            "or set data.options.test_dir.")
        parts["test"] = scan(base, base / tdir, names, links_outside)[:2]
        if val_dir:
            parts["val"] = scan(base, base / val_dir, names, links_outside)[:2]
    else:
        reader, labels, names = scan(base, base, links_outside=links_outside)
        if not 0 < test_split < 1:
            raise DataError(f"imagefolder: test_split must lie in (0, 1), got {test_split}.")
        keep, out = stratified_split(labels, test_split, split_seed)
        parts["train"] = (reader.subset(keep), labels[keep])
        parts["test"] = (reader.subset(out), labels[out])
    if len(names) < 2:
        raise DataError(f"imagefolder: {base} has one class ({names[0]!r}); classification needs at least two.")
    if len(parts["test"][0]) == 0:
        raise DataError(f"imagefolder: the test split of {base} is empty; raise test_split or add test images.")
    parts = {k: (r, torch.from_numpy(y)) for k, (r, y) in parts.items()}
    train_reader = parts["train"][0]
    return image_splits(
        f"imagefolder:{base.name}", parts, len(names), names, first=_probe_paths(train_reader),
        size=size, resize=resize, channels=channels, mean="auto" if mean is None else mean, std=std,
        decode=decode, on_bad=on_bad, stats_samples=stats_samples)


def _probe_paths(reader: FolderReader, n: int = 16) -> list[Path]:
    """Up to ``n`` training images spread over the classes, whose majority gives the
    default size and channel count (the first file alone may be the odd one out)."""
    picks = np.unique(np.linspace(0, len(reader) - 1, min(n, len(reader))).astype(np.int64))
    return [Path(reader.root) / reader.files[int(i)] for i in picks]
