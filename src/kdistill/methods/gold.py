"""GOLD-style cross-tokenizer distillation (after TRL's GOLD trainer): tokens of the two
tokenizations are grouped into spans covering the same text; a span's distribution is its
first position's next-token distribution times the probabilities of its later actual
tokens; tokens with the same text in both vocabularies are compared directly (L1,
weight ``matched_weight``), the others by ULD's sorted L1 (``unmatched_weight``).
See :mod:`kdistill.methods._cross`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ._base import Context, Method
from ._cross import gold_loss
from ._registry import register_method


@register_method("gold")
class GOLD(Method):
    default_ce_weight = 0.0
    #: accepts a teacher whose tokenizer differs from the student's
    cross_tokenizer: ClassVar[bool] = True

    @dataclass
    class Config:
        temperature: float = 1.0
        matched_weight: float = 1.0
        unmatched_weight: float = 1.0

    def forward(self, ctx: Context) -> Tensor:
        return gold_loss(ctx.student_logits, ctx.teacher, ctx.labels, self.cfg.temperature,
                         self.cfg.matched_weight, self.cfg.unmatched_weight)
