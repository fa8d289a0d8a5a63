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

from ..data import Augment, Dataset
from ..errors import ConfigError, DataError
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
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; choose another --out or pass --overwrite.")
    n = len(data)
    if n == 0:
        raise DataError(f"{data.name}: cannot cache an empty dataset.")
    device = torch.device(device)
    teacher.to(device)
    np_dtype = DTYPES[dtype]
    features = list(dict.fromkeys(features))

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        arrays: dict[str, np.memmap] = {}

        def array(name: str, shape: tuple[int, ...], dt) -> np.memmap:
            if name not in arrays:
                arrays[name] = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dt, shape=shape)
            return arrays[name]

        # offsets are at most 2 * 64 (config bound on shift) and the flip is 0/1: int16 is enough
        # (crop boxes are at most the image side, far below 2**15)
        width = int(aug.params(1, len(data.input_shape) + 1, torch.Generator()).shape[1]) if aug is not None else 3
        view_params = np.zeros((n, views, width), np.int16)
        num_classes = None
        combine = None
        for k in range(views):
            if aug is not None:
                g = torch.Generator().manual_seed(seed * 1_000_003 + k)
                view_params[:, k] = aug.params(n, len(data.input_shape) + 1, g).numpy().astype(np.int16)
            for batch in data.batches(batch_size):
                i = int(batch["index"][0])
                j = i + batch["x"].shape[0]
                x = batch["x"].to(device)
                if aug is not None:
                    x = aug.apply(x, torch.from_numpy(view_params[i:j, k].astype(np.int64)).to(device))
                out = teacher({"x": x, "index": torch.arange(i, j, device=device)}, features)
                logits = out.logits.detach().float().cpu()
                if num_classes is None:
                    num_classes = int(logits.shape[1])
                    combine = out.combine if out.member_logits is not None and out.combine == "mean_prob" else None
                    if combine is not None and topk is not None:
                        raise ConfigError(
                            "A top-k cache cannot represent a mean-of-probabilities ensemble at other "
                            "temperatures; cache it in full (no topk) or use combine: mean_logit."
                        )
                    if topk is not None and not 1 <= topk <= num_classes:
                        raise ConfigError(f"topk must lie in [1, {num_classes}] (the class count), got {topk}.")
                if topk is not None:
                    vals, idx = logits.topk(topk, dim=1)
                    idt = np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32
                    array("topk_values", (n, views, topk), np_dtype)[i:j, k] = vals.numpy()
                    array("topk_indices", (n, views, topk), idt)[i:j, k] = idx.numpy()
                else:
                    array("logits", (n, views, num_classes), np_dtype)[i:j, k] = logits.numpy()
                if combine is not None:
                    mem = out.member_logits.detach().float().cpu().transpose(0, 1)
                    array("members", (n, views, *mem.shape[1:]), np_dtype)[i:j, k] = mem.numpy()
                for f_i, spec in enumerate(features):
                    feat = out.features[spec].detach().float().cpu()
                    array(f"feature_{f_i}", (n, views, *feat.shape[1:]), np_dtype)[i:j, k] = feat.numpy()
            if log is not None:
                log(f"cached view {k + 1}/{views} of {n} samples")
        if aug is not None:
            np.save(tmp / "views.npy", view_params)
        eval_meta = {}
        for name, ds in (eval_sets or {}).items():
            outs, keys = [], []
            for b in ds.batches(batch_size):
                outs.append(teacher({"x": b["x"].to(device)}).logits.detach().float().cpu())
                keys.append(row_keys(b["x"]))
            np.save(tmp / f"eval_{name}.npy", torch.cat(outs).numpy().astype(np.float32))
            np.save(tmp / f"eval_{name}_keys.npy", np.concatenate(keys) if keys else np.zeros((0, 16), np.uint8))
            eval_meta[name] = {"length": len(ds), "fingerprint": ds.fingerprint()}
        for a in arrays.values():
            a.flush()
        arrays.clear()  # close the memory maps before the folder is renamed

        stored = sum(f.stat().st_size for f in tmp.iterdir() if not f.name.startswith("eval_"))
        full = n * views * num_classes * 4
        meta = {
            "format": CACHE_FORMAT,
            "dataset": {
                "name": data.name,
                "length": n,
                "fingerprint": data.fingerprint(),
                "input_shape": list(data.input_shape),
            },
            "num_classes": num_classes,
            "teacher": {"fingerprint": teacher_fingerprint(teacher), "type": type(teacher).__name__},
            "combine": combine,
            "dtype": dtype,
            "topk": topk,
            "views": views,
            "augment": aug.describe() if aug is not None else None,
            "seed": seed,
            "features": features,
            "eval_sets": eval_meta,
            "bytes": stored,
            "bytes_full_fp32": full,
            "bytes_saved": full - stored,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _replace_dir(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; an existing ``path`` is moved aside first, then removed."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


