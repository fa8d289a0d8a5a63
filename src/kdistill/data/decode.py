"""How image sources decode their files: one typed options object, built from the ``data``
section (:meth:`kdistill.config.DataConfig.decode_options`) and handed to every source that
declares it decodes images (:func:`decodes_images`). Each default is spelled here, once."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

F = TypeVar("F", bound=Callable)

#: the ``DecodeOptions`` fields, also accepted as loose keywords by ``load_dataset``
DECODE_FIELDS = ("resident", "resident_budget_mb", "workers")


@dataclass(frozen=True)
class DecodeOptions:
    """Attributes:
        resident: decode every image once into memory (``True``), per batch in worker
            processes (``False``), or resident when the decoded images fit
            ``resident_budget_mb`` (``"auto"``).
        resident_budget_mb: the ``auto`` memory budget in MiB.
        workers: decoding worker processes; ``None``: the cores less one, at most 8.
    """

    resident: bool | Literal["auto"] = "auto"
    resident_budget_mb: float = 2048
    workers: int | None = None

    def worker_count(self) -> int:
        """``workers``, or the default when it is not set."""
        return default_workers() if self.workers is None else int(self.workers)


def default_workers() -> int:
    """Decoding workers when ``data.workers`` is not set: the cores less one, at most 8."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, n - 1))


def decodes_images(fn: F) -> F:
    """Mark a dataset source as one that decodes image files: ``load_dataset`` passes it the
    run's :class:`DecodeOptions` as ``decode=``. Other sources never see them."""
    fn.decodes_images = True  # type: ignore[attr-defined]
    return fn
