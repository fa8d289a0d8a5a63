"""Hard-label cross-entropy: the student trained alone, and the CE term of every total loss."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..losses import hard_label_ce, soft_target_ce
from ._base import Context, Method
from ._registry import register_method


@register_method("ce")
class CrossEntropy(Method):
    """Cross-entropy with the dataset's labels (unlabelled transfer samples, label -1, skipped)."""

    needs_teacher = False
    role = "task"

    @dataclass
    class Config:
        label_smoothing: float = 0.0

    def forward(self, ctx: Context) -> Tensor:
        soft = ctx.batch.get("y_soft")  # mixed (Mixup/CutMix) or smoothed labels from data.recipe
        if soft is not None:
            return soft_target_ce(ctx.student_logits, soft)
        return hard_label_ce(ctx.student_logits, ctx.labels, self.cfg.label_smoothing)
