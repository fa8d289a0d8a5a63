"""Hinton KD: match the teacher's soft targets at temperature T.

Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network",
arXiv:1503.02531. Loss ``KL(p_t^T || p_s^T) * T^2``; used alone it is paired with a CE
term, ``alpha * KD + (1 - alpha) * CE``.

Defaults from the CRD benchmark recipe (Tian et al. 2020, RepDistiller): T = 4,
alpha = 0.9 (KD weight 0.9, CE weight 0.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..losses import kl_to_targets
from ._base import Context, Method
from ._registry import register_method


@register_method("kd")
class KD(Method):
    default_weight = 0.9
    default_ce_weight = 0.1

    @dataclass
    class Config:
        temperature: float = 4.0

    def __init__(self, cfg, student, teacher, example):
        super().__init__(cfg, student, teacher, example)
        if cfg.temperature <= 0:
            from ..errors import ConfigError

            raise ConfigError(f"kd: temperature must be positive, got {cfg.temperature}.")

    def forward(self, ctx: Context) -> Tensor:
        t = self.cfg.temperature
        return kl_to_targets(ctx.student_logits, ctx.teacher.log_soft_targets(t), t)
