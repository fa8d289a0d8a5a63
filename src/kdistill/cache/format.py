"""Teacher-output caches: run the teacher once, distil from its stored outputs many times.

A cache is a folder, written into a temporary folder and renamed into place (a reader sees
the whole cache or none of it)::

    meta.json          what was stored, and for which data and which teacher
    logits.npy         (N, K, C) teacher logits, fp32 or fp16         (full caches)
    topk_values.npy    (N, K, k) the k largest logits                  (top-k caches)
    topk_indices.npy   (N, K, k) their classes, int16 (int32 above 32767 classes)
    members.npy        (N, K, M, C) member logits of a mean-of-probabilities ensemble
    views.npy          (N, K, 3) augmentation parameters of each stored view
    feature_<i>.npy    (N, K, ...) recorded features, one file per tap spec
    eval_<name>.npy    (n, C) logits of an evaluation set, and eval_<name>_keys.npy, a
                       16-byte hash of each of its inputs (for lookup by content)

Every array is a NumPy ``.npy`` file, read back memory-mapped, so a cache larger than
memory still works; :class:`~kdistill.cache.CachedTeacher` reads the rows of a batch by
``batch["index"]`` (and ``batch["view"]``).

**Top-k caches** keep the ``k`` largest logits of each sample: soft targets are then the
softmax over those ``k`` logits at the loss's temperature (the full targets restricted to
the top k and renormalised), with zero mass elsewhere. ImageNet-scale relabelling stores
top-k this way (ReLabel, Yun et al. 2021, arXiv:2101.05022; FKD, Shen & Xing 2021,
arXiv:2112.01528, which keeps the top 5 or 10 of 1000 classes).

**Views** (consistent teaching, Beyer et al. 2022, "Knowledge distillation: A good teacher
is patient and consistent", arXiv:2106.05237): with ``views=K`` and an augmentation, each
sample is stored in ``K`` augmented copies whose parameters are saved; the loader shows
the student one of exactly those copies each epoch, so the student never sees an input
whose teacher output it does not have.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data import Dataset
from ..errors import DataError
from ..safe_read import FKDMeta, read_json

CACHE_FORMAT = 1
DTYPES = {"fp32": np.float32, "fp16": np.float16}


def teacher_fingerprint(teacher: Any) -> str:
    """SHA-256 (first 32 hex digits) over a teacher's weights: names, dtypes, shapes, values.

    Works for :class:`~kdistill.teachers.ModuleTeacher`, ensembles (members in order, plus
    the combine mode) and plain modules; a teacher without weights gives ``"unknown"``.
    """
    h = hashlib.sha256()
    members = getattr(teacher, "members", None)
    modules = (
        [getattr(m, "module", m) for m in members] if members is not None else [getattr(teacher, "module", teacher)]
    )
    if members is not None:
        h.update(str(getattr(teacher, "combine", "")).encode())
    found = False
    for i, module in enumerate(modules):
        if not hasattr(module, "state_dict"):
            continue
        for name, t in sorted(module.state_dict().items()):
            found = True
            t = t.detach().cpu().contiguous().reshape(-1)  # 0-d buffers (BatchNorm's counter) too
            h.update(f"{i}:{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32] if found else "unknown"


def row_keys(x: Tensor) -> np.ndarray:
    """``(n, 16)`` uint8: a BLAKE2b hash of each row's float32 bytes (lookup by content)."""
    a = np.ascontiguousarray(x.detach().float().cpu().numpy()).reshape(x.shape[0], -1)
    return (
        np.stack([np.frombuffer(hashlib.blake2b(r.tobytes(), digest_size=16).digest(), np.uint8) for r in a])
        if len(a)
        else np.zeros((0, 16), np.uint8)
    )


def read_meta(path: str | Path) -> dict[str, Any]:
    """A cache's ``meta.json``, or a :class:`DataError` saying the folder is not a cache."""
    path = Path(path)
    file = path / "meta.json"
    if not file.is_file():
        raise DataError(f"{path} is not a teacher cache (no meta.json); create one with `kdistill cache-teacher`.")
    meta = read_json(file, FKDMeta, hint=" Re-create the cache with `kdistill cache-teacher`.")
    if meta.get("format") != CACHE_FORMAT:
        raise DataError(
            f"{path} has cache format {meta.get('format')!r}; this version reads {CACHE_FORMAT}. Re-create it."
        )
    return meta


def check_matches(
    meta: dict[str, Any], data: Dataset, num_classes: int | None, teacher_fp: str | None = None
) -> None:
    """Refuse a cache made for other data, another class count or another teacher."""
    d = meta["dataset"]
    problems = []
    if d["length"] != len(data):
        problems.append(f"it holds {d['length']} samples but the training data has {len(data)}")
    elif d["fingerprint"] != data.fingerprint():
        problems.append(
            f"its dataset fingerprint {d['fingerprint']} differs from the training data's "
            f"{data.fingerprint()} "
            "(other samples, order, labels, subset, split or preprocessing)"
        )
    if num_classes is not None and meta["num_classes"] != num_classes:
        problems.append(f"it has {meta['num_classes']} classes but the data has {num_classes}")
    if teacher_fp is not None and meta["teacher"]["fingerprint"] != teacher_fp:
        problems.append(
            f"its teacher fingerprint {meta['teacher']['fingerprint']} differs from this teacher's {teacher_fp}"
        )
    if problems:
        raise DataError(
            f"The teacher cache does not match this run: {'; '.join(problems)}. "
            "Re-create it with `kdistill cache-teacher` for this config."
        )


def describe(meta: dict[str, Any]) -> str:
    """One line about a cache: size, what it holds, what it saved."""
    mib = meta["bytes"] / 2**20
    saved = meta["bytes_saved"] / max(1, meta["bytes_full_fp32"])
    what = f"top-{meta['topk']}" if meta["topk"] else "full"
    vs = (
        f"{100 * saved:.0f}% less than full fp32 logits"
        if saved >= 0
        else f"{-100 * saved:.0f}% more than full fp32 logits: stored features and view parameters"
    )
    return (
        f"{meta['dataset']['length']} samples x {meta['views']} view(s), {meta['num_classes']} classes, "
        f"{what} {meta['dtype']} logits: {mib:.2f} MiB ({vs})."
    )


def nbytes_of(arrays: dict[str, np.ndarray]) -> int:
    return int(sum(math.prod(a.shape) * a.dtype.itemsize for a in arrays.values()))
