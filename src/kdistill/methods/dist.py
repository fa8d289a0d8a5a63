"""DIST: knowledge distillation from a stronger teacher.

Huang, You, Wang, Qian & Xu (2022), "Knowledge Distillation from A Stronger Teacher",
NeurIPS, arXiv:2205.10536. Instead of matching probabilities exactly, the student keeps the
teacher's *relations*, measured by the Pearson correlation ``rho`` of the softmax outputs
``Y = softmax(Z / tau)`` (shape ``(B, C)``):

* inter-class relation, per sample across classes: ``1 - mean_i rho(Y_s[i, :], Y_t[i, :])``;
* intra-class relation, per class across the batch: ``1 - mean_j rho(Y_s[:, j], Y_t[:, j])``,

and ``L = tau^2 * (beta * L_inter + gamma * L_intra)``. Pearson correlation makes
each relation invariant to positive affine changes of the vectors compared.

Defaults: beta = gamma = 1, tau = 1, the paper's ImageNet setting and the official code's
defaults; term weight 1.0, CE weight 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ._base import Context, Method
from ._registry import register_method


def pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def relation_loss(y_s: Tensor, y_t: Tensor) -> Tensor:
    """``1 - mean row-wise Pearson correlation``: the inter-class relation for ``(B, C)``."""
    return 1.0 - pearson_rows(y_s, y_t).mean()


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, beta: float = 1.0, gamma: float = 1.0,
              tau: float = 1.0) -> dict[str, Tensor]:
    """The two weighted parts ``{"inter": ..., "intra": ...}``; their sum is DIST's loss."""
    y_s = F.softmax(student_logits.float() / tau, 1)
    y_t = F.softmax(teacher_logits.detach().float() / tau, 1)
    return {
        "inter": tau * tau * beta * relation_loss(y_s, y_t),
        "intra": tau * tau * gamma * relation_loss(y_s.t(), y_t.t()),
    }


@register_method("dist")
class DIST(Method):
    """DIST (Huang et al. 2022); see the module docstring."""

    default_weight = 1.0
    default_ce_weight = 1.0

    @dataclass
    class Config:
        beta: float = 1.0
        gamma: float = 1.0
        tau: float = 1.0

    def __init__(self, cfg, student, teacher, example):
        super().__init__(cfg, student, teacher, example)
        if cfg.tau <= 0:
            raise ConfigError(f"dist: tau must be positive, got {cfg.tau}.")

    def forward(self, ctx: Context) -> dict[str, Tensor]:
        return dist_loss(ctx.student_logits, ctx.teacher_logits, self.cfg.beta, self.cfg.gamma, self.cfg.tau)
