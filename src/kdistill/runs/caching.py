"""``kdistill cache-teacher``: cache a run config's teacher for that run's training data."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..cache import cache_teacher
from ..config import RunConfig
from ..data import Augment, views_augment
from ..devices import resolve_device
from ..errors import ConfigError
from .build import prepare_data, teacher_from_checkpoints


def cache_from_config(
    cfg: RunConfig,
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
    t = cfg.teacher
    if t is None or t.cache is not None:
        raise ConfigError("cache-teacher needs a config whose teacher is a model or an ensemble with checkpoints.")
    if cfg.data.transfer is not None:
        raise ConfigError("cache-teacher covers the training data only; remove data.transfer from this config.")
    data = prepare_data(cfg)
    teacher = teacher_from_checkpoints(t, data, trust)
    a = cfg.data.augment
    # a recipe's replayable part (RandomResizedCrop + flip) are the views (FKD); else shift/flip
    aug = views_augment(cfg.data.recipe, data.input_shape) if cfg.data.recipe is not None else Augment(a.shift, a.flip)
    evals = {"test": data.test} | ({"val": data.val} if data.val is not None else {})
    return cache_teacher(
        teacher,
        data.train,
        path,
        features=features,
        topk=topk,
        dtype=dtype,
        views=views,
        augment=aug,
        seed=cfg.train.seed,
        eval_sets=evals,
        batch_size=batch_size or cfg.data.eval_batch_size,
        device=resolve_device(cfg.train.device),
        overwrite=overwrite,
        log=log,
    )
