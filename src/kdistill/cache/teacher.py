"""Cached teachers: a teacher whose outputs are read from a cache (see
:mod:`kdistill.cache.format`) instead of computed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import Augment, Dataset, StoredViews, augment_from_meta, views_augment
from ..errors import ConfigError, DataError
from ..safe_read import check_array, load_npy
from ..teachers import TeacherOutput
from .format import check_matches, nbytes_of, read_meta, row_keys, teacher_fingerprint


@dataclass
class TopKTeacherOutput(TeacherOutput):
    """A teacher output of which only the ``k`` largest logits are known (a top-k cache).

    Soft targets are the softmax over the kept logits at the requested temperature (the
    full targets restricted to the top ``k`` and renormalised); the other classes get zero
    mass, which :func:`~kdistill.losses.kl_to_targets` handles. ``logits`` holds the kept
    logits in place and ``min(kept) - 1e4`` elsewhere, so argmax, agreement and softmax at
    any T up to 100 are right in fp32 (exp(-100) is below fp32's normal range); losses
    should use :meth:`log_soft_targets`, which is exact at every temperature.

    Attributes:
        topk_values: ``(N, k)`` the kept logits.
        topk_indices: ``(N, k)`` their classes.
    """

    topk_values: Tensor | None = None
    topk_indices: Tensor | None = None

    @classmethod
    def from_topk(cls, values: Tensor, indices: Tensor, num_classes: int, features=None) -> TopKTeacherOutput:
        values, indices = values.float(), indices.long()
        fill = values.min(-1, keepdim=True).values - 1e4
        logits = fill.expand(values.shape[0], num_classes).scatter(1, indices, values)
        return cls(logits, features or {}, topk_values=values, topk_indices=indices)

    def log_soft_targets(self, temperature: float) -> Tensor:
        lp = F.log_softmax(self.topk_values.float() / temperature, dim=-1)
        out = torch.full_like(self.logits, float("-inf"), dtype=torch.float32)
        return out.scatter(1, self.topk_indices, lp)


class CachedTeacher:
    """Teacher outputs read from a cache made by :func:`kdistill.cache.cache_teacher`.

    Rows are read at ``batch["index"]`` (and ``batch["view"]`` for a cache of augmented
    views, which :attr:`views` gives the loader). Inputs of a batch without ``"index"`` are
    looked up by content among the cached evaluation sets (and the training data, when it
    was cached unaugmented), so the cache also serves evaluation; an input it does not
    hold raises :class:`~kdistill.errors.DataError`.

    Args:
        path: the cache folder.
        resident: copy the arrays into the device's memory on :meth:`to` (``None``: when
            they total at most ``resident_limit`` bytes); otherwise rows are read from the
            memory-mapped files for each batch.
        resident_limit: the automatic residency threshold (default 2 GiB).
    """

    def __init__(self, path, resident: bool | None = None, resident_limit: int = 2 << 30):
        self.path = str(path)
        self.meta = read_meta(path)
        self.num_classes = int(self.meta["num_classes"])
        self.topk = self.meta["topk"]
        names = ["topk_values", "topk_indices"] if self.topk else ["logits"]
        if self.meta.get("combine"):
            names.append("members")
        names += [f"feature_{i}" for i in range(len(self.meta["features"]))]
        self._np = _checked_arrays(self.path, self.meta, names)
        self.views = None
        if self.meta["augment"] is not None:
            params = torch.from_numpy(_checked_views(self.path, self.meta).astype(np.int64))
            self.views = StoredViews(augment_from_meta(self.meta["augment"]), params)
        self.resident = nbytes_of(self._np) <= resident_limit if resident is None else resident
        self._t: dict[str, Tensor] = {}
        self.device = torch.device("cpu")
        self._train_data: Dataset | None = None
        self._lookup: dict[bytes, tuple[str, int]] | None = None
        self._eval: dict[str, Tensor] = {}

    @classmethod
    def open(cls, path, data, num_classes: int | None = None, teacher=None, **kwargs) -> CachedTeacher:
        """Open a cache and refuse it unless it was made for ``data`` (length, fingerprint),
        ``num_classes`` and, when given, ``teacher`` (weights fingerprint)."""
        fp = teacher_fingerprint(teacher) if teacher is not None else None
        check_matches(read_meta(path), data, num_classes, fp)
        self = cls(path, **kwargs)
        self._train_data = data
        return self

    def to(self, device) -> CachedTeacher:
        self.device = torch.device(device)
        if self.resident and self._t:  # already read: move, do not read the files again
            self._t = {n: t.to(self.device) for n, t in self._t.items()}
        elif self.resident:
            self._t = {n: torch.from_numpy(np.array(a)).to(self.device) for n, a in self._np.items()}
        return self

    def parameters(self):
        return iter(())

    def _rows(self, name: str, index: Tensor, view: Tensor) -> Tensor:
        # an index past the cache (on CUDA a device-side assert instead) means other training data
        try:
            if self.resident and self._t:
                t = self._t[name]
                return t[index.to(t.device), view.to(t.device)].to(self.device)
            i, v = index.cpu().numpy(), view.cpu().numpy()
            return torch.from_numpy(self._np[name][i, v]).to(self.device, non_blocking=True)
        except IndexError:
            raise DataError(
                f"A batch asks for sample {int(index.max())}, but the teacher cache {self.path} holds "
                f"{self.meta['dataset']['length']} samples: the training data (a transfer set added?) is not "
                "what was cached. Re-create the cache for this config."
            ) from None

    def __call__(self, batch: dict, features: Sequence[str] = ()) -> TeacherOutput:
        stored = self.meta["features"]
        missing = [f for f in features if f not in stored]
        if missing:
            raise ConfigError(
                f"The teacher cache {self.path} holds no features {missing} (it holds {stored or 'none'}); "
                "re-create it with --feature for each tap this method reads."
            )
        if "index" not in batch:
            if features:
                raise DataError("A teacher cache answers feature requests only for batches with 'index'.")
            return TeacherOutput(self._by_content(batch["x"]).to(self.device))
        index = batch["index"]
        view = batch.get("view")
        if view is None:
            if self.views is not None:
                raise ConfigError(
                    f"The teacher cache {self.path} holds {self.views.count} augmented view(s) per sample, "
                    "but the batch says not which one the student sees; load batches with "
                    "DeviceLoader(views=teacher.views)."
                )
            view = torch.zeros_like(index)
        feats = {f: self._rows(f"feature_{stored.index(f)}", index, view).float() for f in features}
        if self.topk:
            values, classes = self._rows("topk_values", index, view), self._rows("topk_indices", index, view)
            return TopKTeacherOutput.from_topk(values, classes, self.num_classes, feats)
        logits = self._rows("logits", index, view).float()
        if self.meta.get("combine"):
            members = self._rows("members", index, view).float().transpose(0, 1)
            return TeacherOutput(logits, feats, members, self.meta["combine"])
        return TeacherOutput(logits, feats)

    def _by_content(self, x: Tensor) -> Tensor:
        if self._lookup is None:
            self._lookup = {}
            for name in self.meta.get("eval_sets", {}):
                n = (self.meta["eval_sets"][name] or {}).get("length")
                keys = check_array(load_npy(f"{self.path}/eval_{name}_keys.npy"), name, (n, 16), "u")
                logits = check_array(load_npy(f"{self.path}/eval_{name}.npy"), name, (n, self.num_classes), "f")
                self._eval[name] = torch.from_numpy(logits)
                self._lookup.update({k.tobytes(): (name, r) for r, k in enumerate(keys)})
            if self._train_data is not None and self.views is None:
                r = 0
                for b in self._train_data.batches(4096):
                    for k in row_keys(b["x"]):
                        self._lookup[k.tobytes()] = ("", r)
                        r += 1
        rows = []
        for k in row_keys(x):
            hit = self._lookup.get(k.tobytes())
            if hit is None:
                raise DataError(
                    f"The teacher cache {self.path} holds no output for an input without 'index' (it "
                    f"answers its evaluation sets {sorted(self._eval) or 'none'} by content). Re-create it "
                    "with "
                    "`kdistill cache-teacher` from the run's config so it stores the test/val sets."
                )
            name, r = hit
            if name:
                rows.append(self._eval[name][r])
            else:
                i = torch.tensor([r])
                rows.append(self(dict(index=i)).logits[0].cpu())
        return torch.stack(rows).float()


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
    want = views_augment(augment)  # a recipe: its crop and flip (refused if it has more)
    want = want.describe() if want is not None else None
    have = meta["augment"] or None
    if want != have:

        def say(a):
            return ", ".join(f"{k}={v}" for k, v in a.items() if k != "kind") if a else "none"

        key = "data.recipe" if (want or {}).get("kind") else "data.augment"
        raise ConfigError(
            f"{key} ({say(want)}) differs from the augmentation the teacher cache was made with "
            f"({say(have)}): the student would see inputs the teacher never saw. Set data.augment to match, "
            "or re-create the cache with `kdistill cache-teacher` under this config."
        )
    return teacher.views


def _checked_arrays(path: str, meta: dict[str, Any], names: list[str]) -> dict[str, np.ndarray]:
    """The cache's memory-mapped arrays, each checked against ``meta``: rows and views as
    recorded, class indices inside the class count (a truncated, replaced or pickled array
    is one :class:`DataError`)."""
    n, views = int(meta["dataset"]["length"]), int(meta["views"])
    try:
        arrays = {name: load_npy(f"{path}/{name}.npy", mmap=True, what="teacher cache array") for name in names}
    except DataError as e:
        raise DataError(f"Teacher cache {path} is incomplete or damaged: {e} Re-create it.") from None
    k = meta["topk"] or meta["num_classes"]
    for name, a in arrays.items():
        want: tuple[int | None, ...] = (n, views) + (None,) * max(a.ndim - 2, 0)
        if name in ("logits", "topk_values", "topk_indices"):
            want = (n, views, k)
        check_array(a, f"{path}/{name}.npy", want, "iu" if name == "topk_indices" else "f")
    if "topk_indices" in arrays:
        check_array(np.asarray(arrays["topk_indices"]), f"{path}/topk_indices.npy", lo=0, hi=meta["num_classes"] - 1)
    return arrays


def _checked_views(path: str, meta: dict[str, Any]) -> np.ndarray:
    """``views.npy``: integer view parameters ``(N, K, P)`` inside the input (a crop box
    outside the image or an offset beyond the shift is refused)."""
    n, views, aug = int(meta["dataset"]["length"]), int(meta["views"]), meta["augment"]
    file = f"{path}/views.npy"
    p = check_array(load_npy(file, what="view parameter"), file, (n, views, None), "iu")
    if aug.get("kind") == "crop_flip":
        h, w = (int(v) for v in meta["dataset"]["input_shape"][-2:])
        top, left, bh, bw, flip = (p[..., i].astype(np.int64) for i in range(5)) if p.shape[-1] == 5 else [None] * 5
        if top is None or not ((top >= 0) & (left >= 0) & (bh >= 1) & (bw >= 1) & (top + bh <= h) & (left + bw <= w)
                               & ((flip == 0) | (flip == 1))).all():
            raise DataError(f"{file}: crop boxes outside the {h}x{w} inputs (or not 5 numbers per view); "
                            "re-create the cache.")
    else:
        shift = int(aug.get("shift") or 0)
        check_array(p[..., :2] if p.shape[-1] == 3 else p, file, (n, views, 2), lo=0, hi=2 * shift)
        check_array(p[..., 2], file, lo=0, hi=1)
    return p
