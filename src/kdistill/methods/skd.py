"""SKD: streamlined knowledge distillation, as torchdistill configures it.

torchdistill (Matsubara) ships SKD as two logit losses, ``SKDInstanceLoss`` (KD at a
temperature) and ``SKDDirectionLoss`` (with a Tikhonov factor), each of weight 1 in its
ImageNet ResNet-34 -> ResNet-18 sample configuration (T = 4, Tikhonov 0.1); the authors'
mdistiller-style code names the method "Streamlined Knowledge Distillation" (2025). This
module implements the two parts:

* **instance**: ``KL(p_t^T || p_s^T) * T^2``, averaged over the batch (classical KD);
* **direction**: the logits are L2-normalised per sample (only their direction counts) and
  their batch Gram matrices ``G = Z Z^T / C`` compared; each row ``d_i`` of
  ``D = G_s - G_t`` is measured by its Mahalanobis norm ``sqrt(d_i^T S^{-1} d_i)`` under
  ``S = cov(D) + tikhonov * I`` (the covariance of the rows, regularised so it can be
  inverted), averaged over the batch.

Both are zero when the student's logits equal the teacher's (the direction part whenever
they point the same way per sample: it ignores each sample's logit norm). Hard-label CE
is added with weight 1 by ``create("skd")``. The authors' code also masks samples by
teacher confidence; torchdistill's losses take no such setting, and neither does this one.

Defaults: torchdistill's sample configuration, temperature 4, tikhonov 0.1, both parts
weight 1; term weight 1, CE weight 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ._base import Context, Method
from ._registry import register_method


def instance_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Classical KD at ``temperature``, times ``T^2``, batch mean."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, -1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / t, -1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean() * t * t


def direction_loss(student_logits: Tensor, teacher_logits: Tensor, tikhonov: float = 0.1) -> Tensor:
    """Mean Mahalanobis norm of the rows of ``G_s - G_t`` (Gram matrices of the L2-normalised
    logits, over ``C``), under their covariance plus ``tikhonov * I``."""
    c = student_logits.shape[-1]
    z_s = F.normalize(student_logits.float(), dim=-1)
    z_t = F.normalize(teacher_logits.detach().float(), dim=-1)
    diff = (z_s @ z_s.t() - z_t @ z_t.t()) / c
    n = diff.shape[0]
    centred = diff - diff.mean(0, keepdim=True)
    cov = centred.t() @ centred / max(n - 1, 1) + tikhonov * torch.eye(n, device=diff.device)
    inv = torch.cholesky_inverse(torch.linalg.cholesky(cov))
    dist2 = torch.einsum("bi,ij,bj->b", diff, inv, diff)
    return torch.sqrt(dist2.clamp_min(0) + 1e-12).mean()


@register_method("skd")
class SKD(Method):
    """Streamlined KD (torchdistill's SKD); see the module docstring."""

    default_weight = 1.0
    default_ce_weight = 1.0

    @dataclass
    class Config:
        temperature: float = 4.0
        tikhonov: float = 0.1
        instance_weight: float = 1.0
        direction_weight: float = 1.0

    def __init__(self, cfg, student, teacher, example):
        super().__init__(cfg, student, teacher, example)
        if not (cfg.temperature > 0 and cfg.tikhonov > 0):
            raise ConfigError(f"skd: need temperature > 0 and tikhonov > 0; got {cfg.temperature}, {cfg.tikhonov}.")

    def forward(self, ctx: Context) -> dict[str, Tensor]:
        z_s, z_t = ctx.student_logits, ctx.teacher_logits
        out = {}
        if self.cfg.instance_weight:
            out["instance"] = self.cfg.instance_weight * instance_loss(z_s, z_t, self.cfg.temperature)
        if self.cfg.direction_weight:
            out["direction"] = self.cfg.direction_weight * direction_loss(z_s, z_t, self.cfg.tikhonov)
        return out
