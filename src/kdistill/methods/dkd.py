"""DKD: decoupled knowledge distillation.

Zhao et al. (2022), "Decoupled Knowledge Distillation", CVPR, arXiv:2203.08679. Classical
KD splits (the paper's Sec. 3.1) into

* TCKD, ``KL(b_t || b_s)`` over the binary distribution ``b = (p_target, 1 - p_target)``,
* NCKD, ``KL(p~_t || p~_s)`` over the distribution among the non-target classes,

with ``KD = TCKD + (1 - p_target^teacher) * NCKD``. DKD weights them independently:
``alpha * TCKD + beta * NCKD``, both at temperature ``T`` and times ``T^2``, and the
weight ramps up linearly over the first ``warmup`` epochs (the official mdistiller recipe),
following the distiller's epoch (``kdistill train`` sets it; in your own loop call
``distiller.set_epoch(epoch, total)`` each epoch).

Samples without a label (``-1``, teacher-labelled transfer data) take the teacher's top
class as their target, since the decomposition needs one.

Defaults (the paper's CIFAR-100 setting, mdistiller): alpha 1.0, beta 8.0, T 4.0,
warm-up 20 epochs, CE weight 1.0, term weight 1.0.

``standardize: true`` applies logit standardization (Sun et al. 2024, CVPR,
arXiv:2403.01427; :mod:`kdistill.methods._logits`) to both sides before the decomposition;
the temperature then defaults to the paper's base temperature 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ._base import Context, Method
from ._logits import full_teacher_logits, resolve_temperature, standardize
from ._registry import register_method


def dkd_parts(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float = 4.0
              ) -> tuple[Tensor, Tensor]:
    """Per-sample ``(TCKD, NCKD)``, each already multiplied by ``T^2``.

    Args:
        student_logits: ``(N, C)``.
        teacher_logits: ``(N, C)``; no gradient flows into them.
        target: ``(N,)`` class indices.
        temperature: softmax temperature ``T``.
    """
    t = temperature
    z_s, z_t = student_logits.float() / t, teacher_logits.detach().float() / t
    gt = F.one_hot(target, z_s.shape[1]).bool()
    log_p_s, log_p_t = F.log_softmax(z_s, 1), F.log_softmax(z_t, 1)
    # binary (target, rest) log-probabilities; log1p(-p) keeps the rest's mass accurate
    lp_s_tgt = log_p_s[gt]
    lp_t_tgt = log_p_t[gt]
    b_s = torch.stack([lp_s_tgt, torch.log1p(-lp_s_tgt.exp().clamp(max=1 - 1e-7))], 1)
    b_t = torch.stack([lp_t_tgt, torch.log1p(-lp_t_tgt.exp().clamp(max=1 - 1e-7))], 1)
    tckd = (b_t.exp() * (b_t - b_s)).sum(1)
    # non-target distribution: softmax over the other classes (target masked out)
    masked_s = F.log_softmax(z_s.masked_fill(gt, float("-inf")), 1)
    masked_t = F.log_softmax(z_t.masked_fill(gt, float("-inf")), 1)
    q_t = masked_t.exp()
    nckd = torch.where(gt, torch.zeros_like(q_t), q_t * (masked_t - masked_s)).sum(1)
    return tckd * t * t, nckd * t * t


@register_method("dkd")
class DKD(Method):
    """Decoupled knowledge distillation (Zhao et al. 2022); see the module docstring."""

    default_weight = 1.0
    default_ce_weight = 1.0

    @dataclass
    class Config:
        alpha: float = 1.0
        beta: float = 8.0
        #: None: 4, or 2 with ``standardize`` (the papers' defaults)
        temperature: float | None = None
        warmup: int = 20
        standardize: bool = False

    def __init__(self, cfg, student, teacher, example):
        super().__init__(cfg, student, teacher, example)
        if cfg.warmup < 0:
            raise ConfigError(f"dkd: need warmup >= 0; got {cfg.warmup}.")
        self.temperature = resolve_temperature("dkd", cfg.temperature, cfg.standardize, 4.0)

    def ramp(self, epoch: int) -> float:
        """Warm-up factor; epochs count from 0 here and from 1 in mdistiller, hence ``epoch + 1``."""
        return 1.0 if self.cfg.warmup == 0 else min((epoch + 1) / self.cfg.warmup, 1.0)

    def forward(self, ctx: Context) -> dict[str, Tensor]:
        ramp = self.ramp(ctx.epoch)
        labels = ctx.labels
        target = torch.where(labels >= 0, labels, ctx.teacher_logits.argmax(1))
        z_s, z_t = ctx.student_logits, ctx.teacher_logits
        if self.cfg.standardize:
            z_s, z_t = standardize(z_s), standardize(full_teacher_logits("dkd", ctx.teacher))
        tckd, nckd = dkd_parts(z_s, z_t, target, self.temperature)
        return {
            "tckd": ramp * self.cfg.alpha * tckd.mean(),
            "nckd": ramp * self.cfg.beta * nckd.mean(),
        }
