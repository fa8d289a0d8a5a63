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
memory still works; :class:`~kdistill.teachers.CachedTeacher` reads the rows of a batch by
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
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .data import ArrayDataset, Augment
from .errors import ConfigError, DataError

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


def cache_teacher(
    teacher: Any,
    data: ArrayDataset,
    path: str | Path,
    *,
    features: Sequence[str] = (),
    topk: int | None = None,
    dtype: str = "fp32",
    views: int = 1,
    augment: Augment | None = None,
    seed: int = 0,
    eval_sets: dict[str, ArrayDataset] | None = None,
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
    from .teachers import ModuleTeacher, Teacher

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
        view_params = np.zeros((n, views, 3), np.int16)
        num_classes = None
        combine = None
        for k in range(views):
            if aug is not None:
                g = torch.Generator().manual_seed(seed * 1_000_003 + k)
                view_params[:, k] = aug.params(n, data.x.dim(), g).numpy().astype(np.int16)
            for i in range(0, n, batch_size):
                j = min(n, i + batch_size)
                x = data.x[i:j].to(device)
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
            outs = [
                teacher({"x": ds.x[i : i + batch_size].to(device)}).logits.detach().float().cpu()
                for i in range(0, len(ds), batch_size)
            ]
            np.save(tmp / f"eval_{name}.npy", torch.cat(outs).numpy().astype(np.float32))
            np.save(tmp / f"eval_{name}_keys.npy", row_keys(ds.x))
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
            "augment": {"shift": aug.shift, "flip": aug.flip} if aug is not None else None,
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


def read_meta(path: str | Path) -> dict[str, Any]:
    """A cache's ``meta.json``, or a :class:`DataError` saying the folder is not a cache."""
    path = Path(path)
    file = path / "meta.json"
    if not file.is_file():
        raise DataError(f"{path} is not a teacher cache (no meta.json); create one with `kdistill cache-teacher`.")
    try:
        meta = json.loads(file.read_text())
    except ValueError:
        raise DataError(f"{file} is damaged (not valid JSON); re-create the cache.") from None
    if meta.get("format") != CACHE_FORMAT:
        raise DataError(
            f"{path} has cache format {meta.get('format')!r}; this version reads {CACHE_FORMAT}. Re-create it."
        )
    return meta


def check_matches(
    meta: dict[str, Any], data: ArrayDataset, num_classes: int | None, teacher_fp: str | None = None
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


def cache_from_config(
    cfg,
    path: str | Path,
    *,
    features: Sequence[str] = (),
    topk: int | None = None,
    dtype: str = "fp32",
    views: int = 1,
    batch_size: int | None = None,
    overwrite: bool = False,
    trust: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Cache the teacher of a run config for the run's training data (subset and split applied),
    with the config's augmentation for the views and its test/val sets for evaluation."""
    from .engine.run import prepare_data
    from .engine.trainer import resolve_device
    from .models import create_model
    from .teachers import EnsembleTeacher, ModuleTeacher

    t = cfg.teacher
    if t is None or t.cache is not None:
        raise ConfigError("cache-teacher needs a config whose teacher is a model or an ensemble with checkpoints.")
    if cfg.data.transfer is not None:
        raise ConfigError("cache-teacher covers the training data only; remove data.transfer from this config.")
    members = t.ensemble or [t]
    missing = [i for i, m in enumerate(members) if not m.checkpoint]
    if missing:
        raise ConfigError(
            "cache-teacher needs trained teachers: set teacher.checkpoint (or each ensemble member's), "
            "e.g. to "
            "runs/<run>/teacher/model.safetensors from an earlier `kdistill train`."
        )
    data = prepare_data(cfg)
    from .engine.checkpoint import load_into, load_weights

    modules = []
    for m in members:
        module = create_model(m.model, data.num_classes, data.input_shape, **m.kwargs)
        load_into(module, load_weights(m.checkpoint, trust=trust), "teacher")
        modules.append(module)
    teacher = ModuleTeacher(modules[0], data.num_classes) if len(modules) == 1 else EnsembleTeacher(modules, t.combine)
    a = cfg.data.augment
    evals = {"test": data.test} | ({"val": data.val} if data.val is not None else {})
    return cache_teacher(
        teacher,
        data.train,
        path,
        features=features,
        topk=topk,
        dtype=dtype,
        views=views,
        augment=Augment(a.shift, a.flip),
        seed=cfg.train.seed,
        eval_sets=evals,
        batch_size=batch_size or cfg.data.eval_batch_size,
        device=resolve_device(cfg.train.device),
        overwrite=overwrite,
        log=log,
    )


def stored_views(teacher: Any, augment: Augment | None):
    """The :class:`~kdistill.data.StoredViews` a loader must use with ``teacher`` (``None``
    for a live teacher or a cache without views).

    A teacher cache fixes the augmentation: training with another one would show the
    student inputs whose teacher outputs were never computed (or, without views, teach
    augmented inputs with the outputs for plain ones, the "fixed teacher" that Beyer et al.
    2022 find clearly worse), so a mismatch is refused.
    """
    meta = getattr(teacher, "meta", None)
    if not hasattr(teacher, "views") or meta is None:
        return None
    want = (augment.shift, augment.flip) if augment is not None and augment.active else None
    have = (meta["augment"]["shift"], meta["augment"]["flip"]) if meta["augment"] else None
    if want != have:

        def say(a):
            return f"shift={a[0]}, flip={a[1]}" if a else "none"

        raise ConfigError(
            f"data.augment ({say(want)}) differs from the augmentation the teacher cache was made with "
            f"({say(have)}): the student would see inputs the teacher never saw. Set data.augment to match, "
            "or re-create the cache with `kdistill cache-teacher` under this config."
        )
    return teacher.views


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
