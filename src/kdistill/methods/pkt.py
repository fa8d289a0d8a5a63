"""PKT: probabilistic knowledge transfer.

Passalis & Tefas (2018), "Learning Deep Representations with Probabilistic Knowledge
Transfer", ECCV, arXiv:1803.10837. Each network's embeddings are L2-normalised; the cosine
similarity kernel ``K_ij = (1 + cos(x_i, x_j)) / 2``, mapped to [0, 1], is turned
into conditional probabilities ``p_{j|i} = K_ij / sum_k K_ik``, and the student
matches the teacher's with ``KL(P_t || P_s)``, averaged over the ``b^2`` pairs as
in RepDistiller. Student and teacher widths may differ: no connector.

Defaults from the CRD benchmark recipe (Tian et al. 2020, RepDistiller): weight 30000,
CE weight 1.0, the pre-logit embedding of each network, eps 1e-7.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ._base import Context, Method
from ._registry import register_method
from .cc import one_embedding


def cosine_conditional(features: Tensor, eps: float = 1e-7) -> Tensor:
    """``p_{j|i}`` from the cosine kernel mapped to [0, 1], rows summing to 1."""
    f = F.normalize(features.float().flatten(1), p=2, dim=1, eps=eps)
    with torch.autocast(f.device.type, enabled=False):  # keep the kernel in fp32
        k = (f @ f.t() + 1.0) / 2.0
    return k / k.sum(dim=1, keepdim=True)


def pkt_loss(student_features: Tensor, teacher_features: Tensor, eps: float = 1e-7) -> Tensor:
    """Mean over all ``b^2`` entries of ``p_t * log((p_t + eps) / (p_s + eps))``."""
    p_s = cosine_conditional(student_features, eps)
    p_t = cosine_conditional(teacher_features.detach(), eps)
    return torch.mean(p_t * torch.log((p_t + eps) / (p_s + eps)))


@register_method("pkt")
class PKT(Method):
    """Probabilistic knowledge transfer (Passalis & Tefas 2018); see the module docstring."""

    default_weight = 30000.0
    default_ce_weight = 1.0

    @dataclass
    class Config:
        student_layers: list[str] | None = None
        teacher_layers: list[str] | None = None
        eps: float = 1e-7

    def __init__(self, cfg, student, teacher, example):
        super().__init__(cfg, student, teacher, example)
        self.student_taps, self.teacher_taps = one_embedding("pkt", cfg, student, teacher)

    def forward(self, ctx: Context) -> Tensor:
        f_s = ctx.student_features[self.student_taps[0]]
        return pkt_loss(f_s, ctx.teacher.features[self.teacher_taps[0]], self.cfg.eps)
