"""Neuron selectivity transfer (NST): match the distribution of channel activation patterns.

Huang & Wang (2017), "Like What You Like: Knowledge Distill via Neuron Selectivity
Transfer", arXiv:1707.01219. Each channel of a map (N, C, *S) is a sample ``f_c`` of its
spatial activation pattern, L2-normalised over positions; the loss is the squared maximum
mean discrepancy between the student's and teacher's channel sets,

    MMD^2 = mean_{i,i'} k(t_i, t_i') + mean_{j,j'} k(s_j, s_j') - 2 mean_{i,j} k(s_j, t_i),

with the polynomial kernel ``k(x, y) = (x.y + c)^d``, ``d = 2``, ``c = 0`` (the paper's
best kernel). Channel counts may differ; spatial sizes are pooled to the smaller. The value
is averaged over the batch and summed over stage pairs; the weight 50 comes from the CRD
benchmark (Tian et al. 2020, RepDistiller), which also pairs the stages as here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ._base import Context, Method
from ._pairs import match_spatial, probe_shapes, require_example, require_maps, stage_pairs
from ._registry import register_method


def poly_kernel(a: Tensor, b: Tensor, degree: int = 2, c: float = 0.0) -> Tensor:
    """``(a_i . b_j + c)^d`` for (N, I, D) and (N, J, D) -> (N, I, J)."""
    return (a @ b.transpose(1, 2) + c).pow(degree)


def nst_loss(student_feat: Tensor, teacher_feat: Tensor, degree: int = 2, c: float = 0.0) -> Tensor:
    """Squared MMD between the normalised channel patterns, averaged over the batch."""
    s, t = match_spatial(student_feat.float(), teacher_feat.detach().float())
    s = F.normalize(s.flatten(2), dim=2)
    t = F.normalize(t.flatten(2), dim=2)
    mmd = (
        poly_kernel(t, t, degree, c).mean((1, 2))
        + poly_kernel(s, s, degree, c).mean((1, 2))
        - 2 * poly_kernel(s, t, degree, c).mean((1, 2))
    )
    return mmd.mean()


@register_method("nst")
class NST(Method):
    """MMD of neuron selectivity patterns between stage pairs."""

    default_weight = 50.0

    @dataclass
    class Config:
        """Attributes:
            student_layers / teacher_layers: paired tap specs (default: last k declared stages).
            degree / c: polynomial kernel ``(x.y + c)^degree`` (paper: 2 and 0).
        """

        student_layers: list[str] | None = None
        teacher_layers: list[str] | None = None
        degree: int = 2
        c: float = 0.0

    def __init__(self, cfg, student, teacher, example):
        super().__init__(cfg, student, teacher, example)
        if cfg.degree < 1:
            raise ConfigError(f"nst: degree must be a positive integer, got {cfg.degree}.")
        s_specs, t_specs = stage_pairs("nst", cfg.student_layers, cfg.teacher_layers, student, teacher)
        s_shapes, t_shapes = probe_shapes(student, teacher, s_specs, t_specs, require_example("nst", example))
        for s, t in zip(s_specs, t_specs, strict=True):
            require_maps("nst", s, s_shapes[s], t, t_shapes[t])
        self.student_taps, self.teacher_taps = s_specs, t_specs

    def forward(self, ctx: Context) -> Tensor:
        d, c = self.cfg.degree, self.cfg.c
        return sum(
            nst_loss(ctx.student_features[s], ctx.teacher.features[t], d, c)
            for s, t in zip(self.student_taps, self.teacher_taps, strict=True)
        )
