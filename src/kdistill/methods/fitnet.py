"""FitNets: a thinner student guided by a hint from the teacher's middle layer.

Romero, Ballas, Kahou, Chassang, Gatta & Bengio (2015), "FitNets: Hints for Thin Deep
Nets", arXiv:1412.6550. The student's *guided* layer goes through a regressor (here the
connector: 1x1 conv + BN for maps, linear for vectors) to the shape of the teacher's *hint*
layer, and the hint loss is the squared error between them (averaged here).

* Default layers: the middle declared stage of each network (the paper's hint is the
  teacher's middle layer; the CRD benchmark guides the middle residual group).
* Stage 1 (hint-based training) is a :class:`FirstPhase`, ``fitnet_hint``: ``hint_epochs`` passes that
  train only the student up to the guided layer (every parameter the guided feature depends
  on) and the regressor, on the hint loss alone.
* The main training adds ``weight * hint loss`` to the other terms. The defaults are the CRD
  benchmark's (Tian et al. 2020, RepDistiller): weight 100, trained jointly with CE, no
  separate first phase (``hint_epochs: 0``). The paper's two-phase recipe is
  ``[{name: fitnet, weight: 0, hint_epochs: N}, {name: kd}, {name: ce, weight: 0.1}]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..connectors import build_connector
from ..errors import ConfigError
from ._base import Context, FirstPhase, Method
from ._pairs import declared, params_reaching, probe_shapes, require_example, teacher_network
from ._registry import register_method


def middle(stages: list[str]) -> str:
    """The middle stage (the deeper of the two middles for an even count)."""
    return stages[len(stages) // 2]


def hint_loss(regressed: Tensor, hint: Tensor) -> Tensor:
    """Mean squared error between the regressed guided feature and the teacher's hint."""
    return F.mse_loss(regressed.float(), hint.detach().float())


@register_method("fitnet")
class FitNet(Method):
    """Hint loss between guided student layer(s) and teacher hint layer(s)."""

    default_weight = 100.0

    @dataclass
    class Config:
        """Attributes:
            student_layers / teacher_layers: guided and hint taps (default: middle stages).
            hint_epochs: epochs of the first (hint) phase (0: none, the CRD benchmark's joint training).
            hint_lr: the hint phase's learning rate (default: the run's).
        """

        student_layers: list[str] | None = None
        teacher_layers: list[str] | None = None
        hint_epochs: int = 0
        hint_lr: float | None = None

    def __init__(self, cfg, student, teacher, example):
        super().__init__(cfg, student, teacher, example)
        if cfg.hint_epochs < 0:
            raise ConfigError(f"fitnet: hint_epochs must be >= 0, got {cfg.hint_epochs}.")
        example = require_example("fitnet", example)
        s_specs = list(cfg.student_layers or [middle(declared(student, "stages", "student", "fitnet"))])
        t_net = teacher_network(teacher)
        t_specs = list(cfg.teacher_layers or [middle(declared(t_net, "stages", "teacher", "fitnet"))])
        if len(s_specs) != len(t_specs):
            raise ConfigError(
                f"fitnet: {len(s_specs)} guided layer(s) {s_specs} but {len(t_specs)} hint layer(s) "
                f"{t_specs}; give student_layers and teacher_layers of the same length."
            )
        s_shapes, t_shapes = probe_shapes(student, teacher, s_specs, t_specs, example)
        self.regressors = nn.ModuleList(
            build_connector(s_shapes[s], t_shapes[t], s, t) for s, t in zip(s_specs, t_specs, strict=True)
        )
        self.student_taps, self.teacher_taps = s_specs, t_specs
        # plain list: these parameters belong to the student, not to this term
        self._hint_phase_student_params = params_reaching(student, s_specs, example) if cfg.hint_epochs else []

    def forward(self, ctx: Context) -> Tensor:
        return sum(
            hint_loss(r(ctx.student_features[s]), ctx.teacher.features[t])
            for r, s, t in zip(self.regressors, self.student_taps, self.teacher_taps, strict=True)
        )

    def first_phase(self) -> FirstPhase | None:
        if self.cfg.hint_epochs <= 0:
            return None
        params = self._hint_phase_student_params + list(self.regressors.parameters())
        return FirstPhase("fitnet_hint", self.cfg.hint_epochs, params, self.forward, self.cfg.hint_lr)
