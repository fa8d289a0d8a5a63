"""CTKD: curriculum temperature for knowledge distillation.

Li, Li, Yang, Cheng, Xu & Yang (2023), "Curriculum Temperature for Knowledge
Distillation", AAAI, arXiv:2211.16231. KD's temperature becomes a learnable module that
*maximises* the KD loss while the student minimises it: its output passes through a
gradient reversal layer (identity forward, gradient times ``-lambda`` backward), so one
optimizer step trains both adversarially. The difficulty grows by a cosine curriculum of
the reversal weight,

    lambda_n = lambda_min + (lambda_max - lambda_min) / 2 * (1 + cos(pi * (1 + min(n, E) / E)))

for epoch ``n`` (from 0) and ``E = curriculum_epochs``: 0 at the start, ``lambda_max``
after ``E`` epochs. The temperature is ``t_min + t_range * sigmoid(theta)``, bounded in
``[t_min, t_min + t_range]``; ``theta`` is one parameter (``mode: global``) or the output
of a small MLP over the concatenated (detached) teacher and student logits, one
temperature per sample (``mode: instance``). The loss is ``KL(p_t^T || p_s^T) * T^2``
(per sample for instance temperatures). The temperature module's parameters are this
term's parameters, so ``Distiller.trainable_parameters()`` hands them to the optimizer.

Defaults from the paper's CIFAR-100 setting: global temperature bounded in [1, 21]
(``t_min`` 1, ``t_range`` 20), lambda from 0 to 1 over 10 epochs, KD weight 0.9 and CE
0.1 as vanilla KD. The starting temperature (4, vanilla KD's) and the MLP's width (256)
are this implementation's choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ._base import Context, Method
from ._registry import register_method


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lam: float) -> Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return -ctx.lam * grad, None


def reverse_grad(x: Tensor, lam: float) -> Tensor:
    """Identity forward; the gradient times ``-lam`` backward (a gradient reversal layer)."""
    return _ReverseGrad.apply(x, float(lam))


def cosine_lambda(epoch: int, epochs: int, lam_min: float = 0.0, lam_max: float = 1.0) -> float:
    """CTKD's curriculum: ``lam_min`` at epoch 0, rising along a half cosine to ``lam_max``
    at ``epochs`` and after (``epochs`` 0: ``lam_max`` at once)."""
    if epochs <= 0:
        return lam_max
    frac = min(max(epoch, 0), epochs) / epochs
    return lam_min + 0.5 * (lam_max - lam_min) * (1 + math.cos(math.pi * (1 + frac)))


def _num_classes(student: nn.Module, teacher, example: Tensor | None) -> int:
    """The logits' width, for sizing the instance-temperature MLP: the teacher's, or one
    probe of the student on ``example`` (in eval mode, without gradients)."""
    n = getattr(teacher, "num_classes", None)
    if n:
        return int(n)
    if example is None:
        raise ConfigError("ctkd: mode 'instance' needs the number of classes: a teacher that knows it, or an example batch.")
    was = student.training
    student.eval()
    try:
        with torch.no_grad():
            return int(student(example[:1]).shape[-1])
    finally:
        student.train(was)


@register_method("ctkd")
class CTKD(Method):
    """Curriculum temperature KD (Li et al. 2023); see the module docstring."""

    default_weight = 0.9
    default_ce_weight = 0.1

    @dataclass
    class Config:
        mode: Literal["global", "instance"] = "global"
        t_min: float = 1.0
        t_range: float = 20.0
        init_temperature: float = 4.0
        lambda_min: float = 0.0
        lambda_max: float = 1.0
        curriculum_epochs: int = 10
        hidden: int = 256

    def __init__(self, cfg, student, teacher, example):
        super().__init__(cfg, student, teacher, example)
        if not (cfg.t_min > 0 and cfg.t_range > 0 and cfg.t_min < cfg.init_temperature < cfg.t_min + cfg.t_range):
            raise ConfigError(f"ctkd: need t_min > 0, t_range > 0 and t_min < init_temperature < t_min + t_range; "
                              f"got t_min={cfg.t_min}, t_range={cfg.t_range}, init_temperature={cfg.init_temperature}.")
        if cfg.curriculum_epochs < 0 or cfg.hidden < 1:
            raise ConfigError(f"ctkd: need curriculum_epochs >= 0 and hidden >= 1; got {cfg.curriculum_epochs}, {cfg.hidden}.")
        frac = (cfg.init_temperature - cfg.t_min) / cfg.t_range
        theta0 = math.log(frac / (1 - frac))
        if cfg.mode == "global":
            self.theta = nn.Parameter(torch.tensor(theta0))
        else:
            c = _num_classes(student, teacher, example)
            self.mlp = nn.Sequential(nn.Linear(2 * c, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 1))
            nn.init.normal_(self.mlp[2].weight, std=1e-3)  # starts near init_temperature for every sample
            nn.init.constant_(self.mlp[2].bias, theta0)

    def lam(self, epoch: int) -> float:
        return cosine_lambda(epoch, self.cfg.curriculum_epochs, self.cfg.lambda_min, self.cfg.lambda_max)

    def temperature(self, ctx: Context) -> Tensor:
        """The temperature, ``()`` (global) or ``(N,)`` (instance), after the reversal layer."""
        if self.cfg.mode == "global":
            theta = self.theta
        else:
            z = torch.cat([ctx.teacher_logits.detach().float(), ctx.student_logits.detach().float()], -1)
            theta = self.mlp(z).squeeze(-1)
        theta = reverse_grad(theta, self.lam(ctx.epoch))
        return self.cfg.t_min + self.cfg.t_range * torch.sigmoid(theta)

    def forward(self, ctx: Context) -> Tensor:
        t = self.temperature(ctx)
        tc = t.unsqueeze(-1) if t.dim() else t
        log_p_s = F.log_softmax(ctx.student_logits.float() / tc, -1)
        log_p_t = F.log_softmax(ctx.teacher_logits.detach().float() / tc, -1)
        per_sample = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
        return (per_sample * t * t).mean()
