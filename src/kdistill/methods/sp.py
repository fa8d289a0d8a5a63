"""SP: similarity-preserving knowledge distillation.

Tung & Mori (2019), "Similarity-Preserving Knowledge Distillation", ICCV, arXiv:1907.09682.
For a batch of ``b`` samples the feature maps are flattened to ``(b, d)``; the batch Gram
matrix ``G = F F^T`` is L2-normalised row by row, and the loss is
``||G_t - G_s||_F^2 / b^2``, summed over the layer pairs. Because
only pairwise similarities are compared, student and teacher widths may differ and no
connector is needed.

Defaults from the CRD benchmark recipe (Tian et al. 2020, RepDistiller): weight 3000,
CE weight 1.0, one pair: the last stage of each network (RepDistiller's ``feat[-2]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._base import Context, Method
from ._pairs import stage_pairs
from ._registry import register_method


def similarity_matrix(features: Tensor) -> Tensor:
    """Row-L2-normalised batch Gram matrix ``normalize(F F^T)`` of ``(b, ...)`` features."""
    f = features.float().flatten(1)
    # fp32 even under autocast: the unnormalised Gram entries overflow fp16
    with torch.autocast(f.device.type, enabled=False):
        return F.normalize(f @ f.t(), p=2, dim=1)


def sp_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """``||G_t - G_s||_F^2 / b^2`` for one layer pair (Tung & Mori 2019)."""
    b = student_features.shape[0]
    diff = similarity_matrix(teacher_features.detach()) - similarity_matrix(student_features)
    return (diff * diff).sum() / (b * b)


@register_method("sp")
class SP(Method):
    """Similarity-preserving KD (Tung & Mori 2019); see the module docstring."""

    default_weight = 3000.0
    default_ce_weight = 1.0

    @dataclass
    class Config:
        student_layers: list[str] | None = None
        teacher_layers: list[str] | None = None
        #: how many of the deepest stages to pair when the layers are not named
        num_stages: int = 1

    def __init__(self, cfg, student, teacher, example):
        super().__init__(cfg, student, teacher, example)
        self.student_taps, self.teacher_taps = stage_pairs(
            "sp", cfg.student_layers, cfg.teacher_layers, student, teacher, last=cfg.num_stages
        )

    def forward(self, ctx: Context) -> Tensor:
        return sum(
            sp_loss(ctx.student_features[s], ctx.teacher.features[t])
            for s, t in zip(self.student_taps, self.teacher_taps, strict=True)
        )
