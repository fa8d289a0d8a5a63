"""VID: variational information distillation.

Ahn et al. (2019), "Variational Information Distillation for Knowledge Transfer", CVPR,
arXiv:1904.05835. Maximising a variational lower bound on the mutual information between
teacher and student features amounts to minimising the negative log-likelihood of the
teacher's feature ``t`` under a Gaussian whose mean ``mu(s)`` is regressed from the
student's feature and whose per-channel variance ``sigma_c^2 = softplus(alpha_c) + eps``
is learned (heteroscedastic over channels,
constant over positions, as in the paper):

    L = mean over (n, c, position) of  0.5 * ((t - mu(s))^2 / sigma_c^2 + log sigma_c^2).

The constant ``0.5 log(2 pi)`` is dropped, as in RepDistiller.
The mean regressor is three 1x1 convolutions (``s -> t -> t -> t`` channels, ReLU between),
and the larger of two feature maps is average-pooled to the smaller spatial size.

Defaults from the CRD benchmark recipe (Tian et al. 2020, RepDistiller): weight 1.0,
CE weight 1.0, every stage pair (the last ``min(#stages)`` of each network), initial
variance 5.0, eps 1e-5. Works on 2-D maps, 1-D maps and vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, ShapeError
from ._base import Context, Method
from ._pairs import probe_shapes, require_example, stage_pairs
from ._registry import register_method


def gaussian_nll(target: Tensor, mean: Tensor, variance: Tensor) -> Tensor:
    """``mean(0.5 * ((target - mean)^2 / var + log var))``; ``variance`` is per channel (dim 1)."""
    var = variance.view(1, -1, *([1] * (target.dim() - 2)))
    return torch.mean(0.5 * ((target - mean) ** 2 / var + torch.log(var)))


def _as_map(x: Tensor) -> Tensor:
    """Vectors become ``(N, C, 1)`` maps so one 1x1-conv regressor serves every shape."""
    return x.unsqueeze(-1) if x.dim() == 2 else x


def _pool_to(x: Tensor, size: tuple[int, ...]) -> Tensor:
    if tuple(x.shape[2:]) == size:
        return x
    return F.adaptive_avg_pool1d(x, size) if x.dim() == 3 else F.adaptive_avg_pool2d(x, size)


class VIDRegressor(nn.Module):
    """The mean network ``mu(s)`` and the learned per-channel variance of one layer pair."""

    def __init__(self, s_channels: int, t_channels: int, spatial_dims: int, init_var: float, eps: float):
        super().__init__()
        conv = nn.Conv1d if spatial_dims == 1 else nn.Conv2d
        mid = t_channels
        self.mean = nn.Sequential(
            conv(s_channels, mid, 1), nn.ReLU(), conv(mid, mid, 1), nn.ReLU(), conv(mid, t_channels, 1)
        )
        # softplus^{-1}(init_var - eps), so the variance starts at init_var
        self.alpha = nn.Parameter(torch.full((t_channels,), math.log(math.expm1(init_var - eps))))
        self.eps = eps

    def variance(self) -> Tensor:
        return F.softplus(self.alpha) + self.eps

    def forward(self, s: Tensor, t: Tensor) -> Tensor:
        s, t = _as_map(s.float()), _as_map(t.float())
        size = tuple(min(a, b) for a, b in zip(s.shape[2:], t.shape[2:], strict=True))
        return gaussian_nll(_pool_to(t, size), self.mean(_pool_to(s, size)), self.variance())


@register_method("vid")
class VID(Method):
    """Variational information distillation (Ahn et al. 2019); see the module docstring."""

    default_weight = 1.0
    default_ce_weight = 1.0

    @dataclass
    class Config:
        student_layers: list[str] | None = None
        teacher_layers: list[str] | None = None
        #: deepest stages to pair when layers are not named (None: all the shallower net has)
        num_stages: int | None = None
        init_var: float = 5.0
        eps: float = 1e-5

    def __init__(self, cfg, student, teacher, example):
        super().__init__(cfg, student, teacher, example)
        if not cfg.init_var > cfg.eps > 0:
            raise ConfigError(f"vid: need init_var > eps > 0; got init_var={cfg.init_var}, eps={cfg.eps}.")
        self.student_taps, self.teacher_taps = stage_pairs(
            "vid", cfg.student_layers, cfg.teacher_layers, student, teacher, last=cfg.num_stages
        )
        s_shapes, t_shapes = probe_shapes(
            student, teacher, self.student_taps, self.teacher_taps, require_example("vid", example)[:2]
        )
        regs = []
        for s, t in zip(self.student_taps, self.teacher_taps, strict=True):
            ss, ts = s_shapes[s], t_shapes[t]
            if max(len(ss), 3) != max(len(ts), 3) or len(ss) > 4:
                raise ShapeError(
                    f"vid: student layer {s!r} {ss} and teacher layer {t!r} {ts} have different numbers "
                    "of spatial dimensions; pair maps with maps of the same kind, or vectors with vectors."
                )
            regs.append(VIDRegressor(ss[1], ts[1], max(len(ts), 3) - 2, cfg.init_var, cfg.eps))
        self.regressors = nn.ModuleList(regs)

    def forward(self, ctx: Context) -> Tensor:
        return sum(
            reg(ctx.student_features[s], ctx.teacher.features[t].detach())
            for reg, s, t in zip(self.regressors, self.student_taps, self.teacher_taps, strict=True)
        )
