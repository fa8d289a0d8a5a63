"""Hinton KD: match the teacher's soft targets at temperature T.

Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network",
arXiv:1503.02531. Loss ``KL(p_t^T || p_s^T) * T^2``; used alone it is paired with a CE
term, ``alpha * KD + (1 - alpha) * CE``.

Defaults from the CRD benchmark recipe (Tian et al. 2020, RepDistiller): T = 4,
alpha = 0.9 (KD weight 0.9, CE weight 0.1).

``standardize: true`` is logit standardization (LSKD; Sun et al. 2024, "Logit
Standardization in Knowledge Distillation", CVPR, arXiv:2403.01427; see
:mod:`kdistill.methods._logits`): both sides' logits are z-scored per sample before the
temperature, whose default then becomes the paper's base temperature 2. The paper's
CIFAR-100 recipe also raises the KD weight to 9 (CE 0.1): set ``weight: 9`` yourself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ..losses import kl_to_targets
from ._base import Context, Method
from ._logits import full_teacher_logits, resolve_temperature, standardize
from ._registry import register_method


@register_method("kd")
class KD(Method):
    default_weight = 0.9
    default_ce_weight = 0.1

    @dataclass
    class Config:
        #: None: 4, or 2 with ``standardize`` (the papers' defaults)
        temperature: float | None = None
        standardize: bool = False

    def __init__(self, cfg, student, teacher, example):
        super().__init__(cfg, student, teacher, example)
        self.temperature = resolve_temperature("kd", cfg.temperature, cfg.standardize, 4.0)

    def forward(self, ctx: Context) -> Tensor:
        t = self.temperature
        if self.cfg.standardize:
            z_t = standardize(full_teacher_logits("kd", ctx.teacher))
            return kl_to_targets(standardize(ctx.student_logits), F.log_softmax(z_t / t, -1), t)
        return kl_to_targets(ctx.student_logits, ctx.teacher.log_soft_targets(t), t)
