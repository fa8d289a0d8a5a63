"""Activation boundaries (AB): make the student's neurons switch on where the teacher's do.

Heo, Lee, Yun & Choi (2019), "Knowledge Transfer via Distillation of Activation Boundaries
Formed by Hidden Neurons", AAAI 2019, arXiv:1811.03233. The student's pre-ReLU response,
through a connector ``r`` (1x1 conv + BN, or linear), is pushed to the teacher's side of
zero with a margin (the hinge-style alternative to the piecewise-differentiable loss):

    L = || rho(T) * relu(m - r(S))  +  (1 - rho(T)) * relu(m + r(S)) ||_2^2,   rho(T) = 1[T > 0],

with margin ``m = 1.0`` (the paper's). Responses are taken before the ReLU: a default stage
tap that is an ``nn.ReLU`` module is read at its input. (A post-ReLU teacher tap has the
same sign pattern ``rho``, so other taps still work.) The squared hinge is averaged over
elements rather than summed, so the CRD benchmark's weight 1 (Tian et al. 2020,
RepDistiller) keeps it on the scale of the cross-entropy, and summed over stage pairs.

The paper uses the loss to *initialise* the student before ordinary training: the
:class:`FirstPhase` ``ab_init`` trains the student up to the deepest matched layer plus the
connectors on this loss alone for ``init_epochs`` (30, RepDistiller's ``init_epochs``). As in
the paper and the CRD benchmark code (whose main training sets the AB loss to zero), the default
main-training weight is 0: the transfer happens in the first phase and the main training trains on
the task. ``weight: 1`` keeps the loss in the main training too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..connectors import build_connector
from ..errors import ConfigError
from ._base import Context, FirstPhase, Method
from ._pairs import (
    params_reaching,
    pre_activation,
    probe_shapes,
    require_example,
    stage_pairs,
    teacher_network,
)
from ._registry import register_method


def ab_loss(student_pre: Tensor, teacher_pre: Tensor, margin: float = 1.0) -> Tensor:
    """Mean squared hinge that puts ``student_pre`` on the teacher's side of zero by ``margin``."""
    s = student_pre.float()
    on = (teacher_pre.detach() > 0).float()
    return (on * F.relu(margin - s).pow(2) + (1 - on) * F.relu(margin + s).pow(2)).mean()


@register_method("ab")
class AB(Method):
    """Activation-boundary transfer between pre-activation stage responses."""

    default_weight = 0.0

    @dataclass
    class Config:
        """Attributes:
            student_layers / teacher_layers: paired taps (default: last k declared stages,
                read before their ReLU where the stage is an ``nn.ReLU`` module).
            margin: m of the hinge (paper: 1.0).
            init_epochs / init_lr: the initialisation first phase (RepDistiller: 30 epochs).
        """

        student_layers: list[str] | None = None
        teacher_layers: list[str] | None = None
        margin: float = 1.0
        init_epochs: int = 30
        init_lr: float | None = None

    def __init__(self, cfg, student, teacher, example):
        super().__init__(cfg, student, teacher, example)
        if cfg.margin < 0 or cfg.init_epochs < 0:
            raise ConfigError(
                f"ab: margin and init_epochs must be >= 0; got {cfg.margin}, {cfg.init_epochs}."
            )
        example = require_example("ab", example)
        s_specs, t_specs = stage_pairs("ab", cfg.student_layers, cfg.teacher_layers, student, teacher)
        if not cfg.student_layers:
            s_specs = [pre_activation(student, s) for s in s_specs]
        if not cfg.teacher_layers:
            t_specs = [pre_activation(teacher_network(teacher), t) for t in t_specs]
        s_shapes, t_shapes = probe_shapes(student, teacher, s_specs, t_specs, example)
        self.connectors = nn.ModuleList(
            build_connector(s_shapes[s], t_shapes[t], s, t) for s, t in zip(s_specs, t_specs, strict=True)
        )
        self.student_taps, self.teacher_taps = s_specs, t_specs
        # plain list: these parameters belong to the student, not to this term
        self._init_student_params = params_reaching(student, s_specs, example) if cfg.init_epochs else []

    def forward(self, ctx: Context) -> Tensor:
        m = self.cfg.margin
        return sum(
            ab_loss(c(ctx.student_features[s]), ctx.teacher.features[t], m)
            for c, s, t in zip(self.connectors, self.student_taps, self.teacher_taps, strict=True)
        )

    def first_phase(self) -> FirstPhase | None:
        if self.cfg.init_epochs <= 0:
            return None
        params = self._init_student_params + list(self.connectors.parameters())
        return FirstPhase("ab_init", self.cfg.init_epochs, params, self.forward, self.cfg.init_lr)
