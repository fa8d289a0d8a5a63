"""Universal Logit Distillation (Boizard et al. 2024, arXiv:2402.12030): token-level KD
between a teacher and a student with *different tokenizers*.

The ``i``-th predicted token of the student is paired with the teacher's ``i``-th; the
loss is the L1 distance between the two next-token distributions sorted by probability
(zero-padded to the larger vocabulary), a closed form of their Wasserstein distance that
needs no shared vocabulary. Used with a teacher whose tokenizer differs from the
student's (the run wraps it in :class:`kdistill.lm.cross_tokenizer.CrossTokenizerTeacher`)
or with the student's own tokenizer (positions paired one to one). The paper adds it to
the cross-entropy on the labels: use ``[{name: ce}, {name: uld, weight: ...}]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ._base import Context, Method
from ._cross import uld_loss
from ._registry import register_method


@register_method("uld")
class ULD(Method):
    default_ce_weight = 0.0
    #: accepts a teacher whose tokenizer differs from the student's
    cross_tokenizer: ClassVar[bool] = True

    @dataclass
    class Config:
        temperature: float = 1.0

    def forward(self, ctx: Context) -> Tensor:
        return uld_loss(ctx.student_logits, ctx.teacher, ctx.labels, self.cfg.temperature)
