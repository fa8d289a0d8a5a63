"""Writing a teacher cache: run the teacher once over the data, store its outputs (the
layout is in :mod:`kdistill.cache.format`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import user_mode
from ..data import Augment, Dataset
from ..errors import ConfigError, DataError
from ..safe_read import remove_dead_temps
from ..teachers import ModuleTeacher, Teacher
from .format import CACHE_FORMAT, DTYPES, row_keys, teacher_fingerprint


def cache_teacher(
    teacher: Any,
    data: Dataset,
    path: str | Path,
    *,
    features: Sequence[str] = (),
    topk: int | None = None,
    dtype: str = "fp32",
    views: int = 1,
    augment: Augment | None = None,
    seed: int = 0,
    eval_sets: dict[str, Dataset] | None = None,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``teacher`` over ``data`` once and store its outputs at ``path``.

    Args:
        teacher: a :class:`~kdistill.teachers.Teacher` (or a module, wrapped frozen).
        data: the training samples; row ``i`` is cached for ``batch["index"] == i``.
        path: the cache folder (created; refused if it exists unless ``overwrite``).
        features: tap specs whose teacher features are stored as well (for feature methods).
        topk: keep only the ``k`` largest logits per sample (``None``: all of them).
        dtype: storage precision of logits and features, ``"fp32"`` or ``"fp16"``.
        views: augmented copies per sample (``>1`` needs an active ``augment``).
        augment: the augmentation of the views; ``None`` or inactive stores the inputs as they are.
        seed: seed of the views' augmentation parameters (view ``k`` uses ``seed * 1_000_003 + k``).
        eval_sets: named evaluation sets whose (unaugmented) logits are stored too, so the
            cache can stand in for the teacher in evaluation; looked up by input content.
        batch_size: teacher batch size.
        device: where the teacher runs.
        overwrite: replace an existing cache.
        log: prints one line of progress per view.

    Returns:
        The cache's ``meta.json`` content (with ``bytes`` stored and ``bytes_saved`` against
        fp32 full logits).
    """
    if not isinstance(teacher, Teacher):
        teacher = ModuleTeacher(teacher)
    aug = _check_request(data, path, dtype, views, augment, overwrite)
    path, n, device = Path(path), len(data), torch.device(device)
    teacher.to(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in remove_dead_temps(path.parent, path.name):  # what a killed cache-teacher left
        if log is not None:
            log(f"removed {name}, left by an interrupted cache-teacher")
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp"))
    os.chmod(tmp, user_mode(0o777))
    try:
        writer = _ViewWriter(tmp, n, views, DTYPES[dtype], topk, list(dict.fromkeys(features)))
        view_params = writer.write(teacher, data, aug, seed, batch_size, device, log)
        if aug is not None:
            np.save(tmp / "views.npy", view_params)
        eval_meta = _write_eval_sets(teacher, eval_sets or {}, tmp, batch_size, device)
        writer.close()
        meta = _meta(tmp, data, writer, teacher, dtype, topk, views, aug, seed, eval_meta)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _check_request(data: Dataset, path, dtype: str, views: int, augment: Augment | None,
                   overwrite: bool) -> Augment | None:
    """Refuse an impossible request before any work; the active augmentation (or ``None``)."""
    if dtype not in DTYPES:
        raise ConfigError(f"Cache dtype {dtype!r} is not supported; use one of {sorted(DTYPES)}.")
    if views < 1:
        raise ConfigError(f"views must be at least 1, got {views}.")
    aug = augment if augment is not None and augment.active else None
    if views > 1 and aug is None:
        raise ConfigError(
            f"views={views} needs an augmentation (shift or flip); without one every view is the same input. "
            "Set data.augment or use views=1."
        )
    if Path(path).exists() and not overwrite:
        raise ConfigError(f"{path} already exists; choose another --out or pass --overwrite.")
    if len(data) == 0:
        raise DataError(f"{data.name}: cannot cache an empty dataset.")
    return aug


class _ViewWriter:
    """The memory-mapped arrays of the training rows' outputs, view by view."""

    def __init__(self, tmp: Path, n: int, views: int, np_dtype, topk: int | None, features: list[str]):
        self.tmp, self.n, self.views, self.np_dtype, self.topk, self.features = tmp, n, views, np_dtype, topk, features
        self.arrays: dict[str, np.memmap] = {}
        self.num_classes: int | None = None
        self.combine: str | None = None

    def array(self, name: str, shape: tuple[int, ...], dt) -> np.memmap:
        if name not in self.arrays:
            self.arrays[name] = np.lib.format.open_memmap(self.tmp / f"{name}.npy", mode="w+", dtype=dt, shape=shape)
        return self.arrays[name]

    def write(self, teacher, data: Dataset, aug, seed: int, batch_size: int, device, log) -> np.ndarray:
        """Every view of every row; the views' augmentation parameters ``(N, K, P)``."""
        n, views = self.n, self.views
        # offsets are at most 2 * 64 (config bound on shift) and the flip is 0/1: int16 is enough
        # (crop boxes are at most the image side, far below 2**15)
        width = int(aug.params(1, len(data.input_shape) + 1, torch.Generator()).shape[1]) if aug is not None else 3
        view_params = np.zeros((n, views, width), np.int16)
        for k in range(views):
            if aug is not None:
                g = torch.Generator().manual_seed(seed * 1_000_003 + k)
                view_params[:, k] = aug.params(n, len(data.input_shape) + 1, g).numpy().astype(np.int16)
            for batch in data.batches(batch_size):
                i = int(batch["index"][0])
                x = batch["x"].to(device)
                if aug is not None:
                    x = aug.apply(x, torch.from_numpy(view_params[i:i + x.shape[0], k].astype(np.int64)).to(device))
                out = teacher({"x": x, "index": torch.arange(i, i + x.shape[0], device=device)}, self.features)
                self.store(out, i, k)
            if log is not None:
                log(f"cached view {k + 1}/{views} of {n} samples")
        return view_params

    def store(self, out, i: int, k: int) -> None:
        """One batch's outputs into rows ``i..`` of view ``k``."""
        logits = out.logits.detach().float().cpu()
        j, n, views, dt = i + logits.shape[0], self.n, self.views, self.np_dtype
        if self.num_classes is None:
            self._first(out, int(logits.shape[1]))
        if self.topk is not None:
            vals, idx = logits.topk(self.topk, dim=1)
            idt = np.int16 if self.num_classes <= np.iinfo(np.int16).max else np.int32
            self.array("topk_values", (n, views, self.topk), dt)[i:j, k] = vals.numpy()
            self.array("topk_indices", (n, views, self.topk), idt)[i:j, k] = idx.numpy()
        else:
            self.array("logits", (n, views, self.num_classes), dt)[i:j, k] = logits.numpy()
        if self.combine is not None:
            mem = out.member_logits.detach().float().cpu().transpose(0, 1)
            self.array("members", (n, views, *mem.shape[1:]), dt)[i:j, k] = mem.numpy()
        for f_i, spec in enumerate(self.features):
            feat = out.features[spec].detach().float().cpu()
            self.array(f"feature_{f_i}", (n, views, *feat.shape[1:]), dt)[i:j, k] = feat.numpy()

    def _first(self, out, num_classes: int) -> None:
        self.num_classes = num_classes
        self.combine = out.combine if out.member_logits is not None and out.combine == "mean_prob" else None
        if self.combine is not None and self.topk is not None:
            raise ConfigError(
                "A top-k cache cannot represent a mean-of-probabilities ensemble at other "
                "temperatures; cache it in full (no topk) or use combine: mean_logit."
            )
        if self.topk is not None and not 1 <= self.topk <= num_classes:
            raise ConfigError(f"topk must lie in [1, {num_classes}] (the class count), got {self.topk}.")

    def close(self) -> None:
        for a in self.arrays.values():
            a.flush()
        self.arrays.clear()  # close the memory maps before the folder is renamed


def _write_eval_sets(teacher, eval_sets: dict[str, Dataset], tmp: Path, batch_size: int, device) -> dict[str, Any]:
    """The (unaugmented) logits of each evaluation set, keyed by input content."""
    eval_meta = {}
    for name, ds in eval_sets.items():
        outs, keys = [], []
        for b in ds.batches(batch_size):
            outs.append(teacher({"x": b["x"].to(device)}).logits.detach().float().cpu())
            keys.append(row_keys(b["x"]))
        np.save(tmp / f"eval_{name}.npy", torch.cat(outs).numpy().astype(np.float32))
        np.save(tmp / f"eval_{name}_keys.npy", np.concatenate(keys) if keys else np.zeros((0, 16), np.uint8))
        eval_meta[name] = {"length": len(ds), "fingerprint": ds.fingerprint()}
    return eval_meta


def _meta(tmp: Path, data: Dataset, writer: _ViewWriter, teacher, dtype: str, topk, views: int, aug, seed: int,
          eval_meta: dict[str, Any]) -> dict[str, Any]:
    """The cache's ``meta.json`` content."""
    n = len(data)
    stored = sum(f.stat().st_size for f in tmp.iterdir() if not f.name.startswith("eval_"))
    full = n * views * writer.num_classes * 4
    return {
        "format": CACHE_FORMAT,
        "dataset": {"name": data.name, "length": n, "fingerprint": data.fingerprint(),
                    "input_shape": list(data.input_shape)},
        "num_classes": writer.num_classes,
        "teacher": {"fingerprint": teacher_fingerprint(teacher), "type": type(teacher).__name__},
        "combine": writer.combine,
        "dtype": dtype,
        "topk": topk,
        "views": views,
        "augment": aug.describe() if aug is not None else None,
        "seed": seed,
        "features": writer.features,
        "eval_sets": eval_meta,
        "bytes": stored,
        "bytes_full_fp32": full,
        "bytes_saved": full - stored,
    }


def _replace_dir(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; an existing ``path`` is moved aside first, then removed."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


