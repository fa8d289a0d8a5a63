"""``kdistill train --check`` of a causal-LM config: the tokenizer, the text, both models
built untrained (``hf-config``) or read from their folders (``hf:``), their position limits
against ``data.block_size``, their vocabularies against the tokenizer's, the teacher's
tokenizer against the student's, and the distiller run once on a batch of real rows. Seconds;
nothing is trained or written."""

from __future__ import annotations

import math

import torch

from ...errors import ConfigError
from ...lm.models import folder_tokenizer
from .config import LMRunConfig


def check_lm(cfg: LMRunConfig, log, trust: bool = False) -> None:
    """The whole check (see the module docstring); one line per finding to ``log``."""
    from .run import (
        build_distiller,
        build_student,
        check_teacher_use,
        needs_teacher,
        text_and_tokenizer,
    )

    tok, train, val = text_and_tokenizer(cfg, log)
    for name, ds in (("training", train), ("validation", val)):
        if ds.targets() == 0:  # every completion cut off by block_size, or no assistant turn
            raise ConfigError(f"The {name} rows hold no target token (a prompt fills every block, or no record "
                              "has a completion / assistant turn); raise data.block_size or check the records.")
    log(f"tokenizer: {tok.kind}, {tok.vocab_size} tokens; block_size {cfg.data.block_size} fits every model")
    teacher = _teacher(cfg, tok, log) if needs_teacher(cfg) else None
    check_teacher_use(cfg, teacher, tok)
    student, rec = build_student(cfg, tok)
    log(f"student: {cfg.student.model}, {rec['params']:,} parameters (untrained)")
    dist_teacher = teacher
    if cfg.lm.cache_k is not None and teacher is not None and cfg.lm.cache_k > tok.vocab_size:
        raise ConfigError(f"lm.cache_k {cfg.lm.cache_k} exceeds the vocabulary ({tok.vocab_size} tokens).")
    distiller = build_distiller(cfg, student, dist_teacher, train, tok)
    batch = train.take(torch.arange(min(2, len(train))))
    loss = distiller(batch)["loss"]
    value = float(loss.detach())
    if not math.isfinite(value):
        raise ConfigError(f"The distiller's loss on an example batch is {value}; check the method settings.")
    loss.backward()
    if not any(p.grad is not None for p in student.parameters()):
        raise ConfigError("The method's loss does not reach the student's parameters; check the method terms.")
    log(f"method: {', '.join(t.get('name', '?') for t in cfg.method_terms())} on a batch of {batch['x'].shape[0]} "
        f"rows: loss {value:.4f}, gradients reach the student")


def _teacher(cfg: LMRunConfig, tok, log):
    from ...lm.models import build_causal_lm, check_same_tokenizer

    t = cfg.teacher
    t_tok = folder_tokenizer(t.model) or tok
    check_same_tokenizer(t_tok, tok, cfg.lm.regime)
    kw = {} if t.model.startswith("hf:") else t.kwargs
    net, rec = build_causal_lm(t.model, kw, t_tok.vocab_size, seed=cfg.teacher_train().seed, eos_id=t_tok.eos_id)
    net.tokenizer = t_tok
    net.eval()
    how = "from its folder" if t.model.startswith("hf:") else "untrained: it is trained first, in the run"
    log(f"teacher: {t.model}, {rec['params']:,} parameters ({how})")
    return net
