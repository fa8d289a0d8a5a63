"""Flow of solution procedure (FSP): match how features change from one stage to the next.

Yim, Joo, Bae & Kim (2017), "A Gift from Knowledge Distillation: Fast Optimization, Network
Minimization and Transfer Learning", CVPR 2017. The FSP matrix of two maps F1 (N, C1, *S)
and F2 (N, C2, *S) is

    G[i, j] = sum_positions F1[i] * F2[j] / (number of positions),   shape (C1, C2),

taken here between each pair of consecutive stage outputs; the loss is the squared
difference of the student's and teacher's matrices (mean over batch and entries, summed
over pairs). Within a pair the larger map is average-pooled to the smaller. Where a
student stage's channel count differs from the teacher's, a 1x1 conv + BN connector maps it
to the teacher's width first.

The paper trains in two phases: first the student minimises the FSP loss alone, then it
trains on the task; the CRD benchmark code (Tian et al. 2020, RepDistiller) does the same
(30 initialisation epochs, FSP loss zero in the main training). So the defaults are
``init_epochs: 30`` (the :class:`FirstPhase` ``fsp_init``: student up to the deepest matched
stage, plus the connectors) and main-training weight 0; ``weight: 50`` (the CRD command line's
beta) keeps the loss in the main training as a joint objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..connectors import build_connector
from ..errors import ConfigError
from ._base import Context, FirstPhase, Method
from ._pairs import match_spatial, params_reaching, probe_shapes, require_example, require_maps, stage_pairs
from ._registry import register_method


def fsp_matrix(first: Tensor, second: Tensor) -> Tensor:
    """(N, C1, *S1), (N, C2, *S2) -> (N, C1, C2), the larger map pooled to the smaller."""
    a, b = match_spatial(first.float(), second.float())
    a, b = a.flatten(2), b.flatten(2)
    return a @ b.transpose(1, 2) / a.shape[2]


def fsp_loss(student_feats: list[Tensor], teacher_feats: list[Tensor]) -> Tensor:
    """Sum over consecutive pairs of the mean squared difference of FSP matrices."""
    total = student_feats[0].new_zeros((), dtype=torch.float32)
    for i in range(len(student_feats) - 1):
        g_s = fsp_matrix(student_feats[i], student_feats[i + 1])
        g_t = fsp_matrix(teacher_feats[i].detach(), teacher_feats[i + 1].detach())
        total = total + (g_s - g_t).pow(2).mean()
    return total


@register_method("fsp")
class FSP(Method):
    """FSP matrices between consecutive stages, student against teacher."""

    default_weight = 0.0

    @dataclass
    class Config:
        """Attributes:
            student_layers / teacher_layers: stage taps, shallow to deep (default: last k
                declared stages); FSP matrices relate each one to the next.
            init_epochs / init_lr: the optional first phase on the FSP loss alone.
        """

        student_layers: list[str] | None = None
        teacher_layers: list[str] | None = None
        init_epochs: int = 30
        init_lr: float | None = None

    def __init__(self, cfg, student, teacher, example):
        super().__init__(cfg, student, teacher, example)
        if cfg.init_epochs < 0:
            raise ConfigError(f"fsp: init_epochs must be >= 0, got {cfg.init_epochs}.")
        example = require_example("fsp", example)
        s_specs, t_specs = stage_pairs("fsp", cfg.student_layers, cfg.teacher_layers, student, teacher)
        if len(s_specs) < 2:
            raise ConfigError(
                f"fsp needs at least two stages on each side (it relates consecutive stages); got "
                f"student {s_specs} and teacher {t_specs}."
            )
        s_shapes, t_shapes = probe_shapes(student, teacher, s_specs, t_specs, example)
        connectors = []
        for s, t in zip(s_specs, t_specs, strict=True):
            ss, ts = s_shapes[s], t_shapes[t]
            require_maps("fsp", s, ss, t, ts)
            # channels only: spatial sizes are reconciled inside each pair, not across networks
            connectors.append(build_connector(ss, (ss[0], ts[1], *ss[2:]), s, t, need_maps=True))
        self.connectors = nn.ModuleList(connectors)
        self.student_taps, self.teacher_taps = s_specs, t_specs
        # plain list: these parameters belong to the student, not to this term
        self._init_student_params = params_reaching(student, s_specs, example) if cfg.init_epochs else []

    def forward(self, ctx: Context) -> Tensor:
        s = [c(ctx.student_features[k]) for c, k in zip(self.connectors, self.student_taps, strict=True)]
        t = [ctx.teacher.features[k] for k in self.teacher_taps]
        return fsp_loss(s, t)

    def first_phase(self) -> FirstPhase | None:
        if self.cfg.init_epochs <= 0:
            return None
        params = self._init_student_params + list(self.connectors.parameters())
        return FirstPhase("fsp_init", self.cfg.init_epochs, params, self.forward, self.cfg.init_lr)
