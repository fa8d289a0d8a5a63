"""A causal-LM run's served teacher (``teacher: {kind: served, ...}``): what
:func:`kdistill.tasks.causal_lm.run.run_lm` trains from when the teacher runs elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..cache.tokens import LMCachedTeacher
from ..distributed import main_process_first
from ..errors import ConfigError
from .data import TokenDataset, records_dataset
from .served import fill_served_cache, served_transfer


def served_teacher(cfg, tok, train: TokenDataset, run_dir: Path, log) -> tuple[TokenDataset, Any, dict[str, Any]]:
    """``(training data, the distiller's teacher, the teacher's record)``.

    Supervised: the served teacher's top-k cache (``teacher.top_k`` tokens a position, in
    ``lm.cache_dir`` or ``<run>/teacher_cache``) answers every batch. Sequence: the
    endpoint's completions are the training data; the methods then need no teacher
    (``ce``). On-policy distillation scores the student's fresh samples every step and is
    not offered through an endpoint."""
    t = cfg.teacher
    record: dict[str, Any] = {"kind": "served", "url": t.url, "model": t.model}
    if cfg.lm.regime == "on_policy":
        raise ConfigError("A served teacher supports lm.regime supervised (a top-k cache through prompt_logprobs) "
                          "and sequence (its completions); on_policy needs a teacher in the process.")
    if cfg.lm.regime == "sequence":
        with main_process_first():
            records = served_transfer(t, train, tok, cfg.lm, cfg.train.seed, cfg.data.eval_batch_size, run_dir, log)
        return records_dataset(records, tok, train.input_shape[0], "transfer"), None, record
    if cfg.lm.cache_k is not None and cfg.lm.cache_k != t.top_k:
        raise ConfigError(f"lm.cache_k ({cfg.lm.cache_k}) and teacher.top_k ({t.top_k}) disagree; a served teacher's "
                          "cache keeps teacher.top_k tokens a position: drop lm.cache_k.")
    folder = Path(cfg.lm.cache_dir) if cfg.lm.cache_dir else run_dir / "teacher_cache"
    with main_process_first():
        record["cache"] = fill_served_cache(t, train, tok, folder, log)
    return train, LMCachedTeacher(folder, train), record


def other_teacher(cfg, tok, train: TokenDataset, run_dir: Path, log) -> tuple[TokenDataset, Any, dict[str, Any]]:
    """The teacher of a ``teacher.kind`` other than a model in the process: ``served``
    (:func:`served_teacher`) or ``multi`` (:func:`kdistill.lm.multi_teacher.multi_teacher`)."""
    if cfg.teacher.kind == "multi":
        from .multi_teacher import multi_teacher

        return multi_teacher(cfg, tok, train, log)
    return served_teacher(cfg, tok, train, run_dir, log)
