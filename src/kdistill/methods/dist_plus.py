"""DIST+: DIST on the logits and on a feature map.

Huang, You, Wang, Qian & Xu (2025), "DIST+: Knowledge Distillation From a Stronger
Adaptive Teacher", IEEE TPAMI 47(7), doi:10.1109/TPAMI.2025.3554235. DIST+ extends DIST
(:mod:`kdistill.methods.dist`: Pearson-correlation relations instead of an exact match)
in two ways: (1) *teacher acclimation*, adapting the teacher towards the student, and
(2) the relational loss *at the feature level* as well as at the logits. This term is (2),
as torchdistill's ``DISTPlusLoss`` configures it (logits and the last stage's feature
map of both networks):

    L = tau^2 * (beta * inter(Y_s, Y_t) + gamma * intra(Y_s, Y_t))       logits, (B, C)
      + tau^2 * (iota * inter(F_s, F_t) + kappa * intra(F_s, F_t))       feature map

where ``inter`` is ``1 - mean row-wise Pearson correlation`` and ``intra`` the same over
columns. For the feature map every spatial position of every sample is a row: the map
``(N, C, *S)`` becomes ``(N * prod(S), C)``, softmaxed over channels at ``tau``, so
``inter`` relates channels at each position and ``intra`` relates positions for each
channel. A student map whose channels differ from the teacher's goes through a 1x1
conv + BN connector (trained with the student); spatial sizes are pooled to the smaller.
Teacher acclimation needs a teacher that trains, which a kdistill teacher never does, so
(1) is not implemented.

Defaults: torchdistill's ImageNet sample configuration: beta = gamma = 2, iota = kappa =
1, tau = 1, term weight 2, CE weight 1; the deepest declared stage of each network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ..connectors import build_connector
from ..errors import ConfigError
from ._base import Context, Method
from ._pairs import match_spatial, probe_shapes, require_example, require_maps, stage_pairs
from ._registry import register_method
from .dist import dist_loss, relation_loss


def feature_relations(student_map: Tensor, teacher_map: Tensor, tau: float = 1.0) -> dict[str, Tensor]:
    """``{"inter": ..., "intra": ...}`` for two maps of equal channels, each ``tau^2 *``
    (1 - mean Pearson correlation), with every position a row of channel probabilities."""
    s, t = match_spatial(student_map.float(), teacher_map.detach().float())
    rows_s = s.flatten(2).transpose(1, 2).reshape(-1, s.shape[1])
    rows_t = t.flatten(2).transpose(1, 2).reshape(-1, t.shape[1])
    y_s, y_t = F.softmax(rows_s / tau, -1), F.softmax(rows_t / tau, -1)
    return {"inter": tau * tau * relation_loss(y_s, y_t), "intra": tau * tau * relation_loss(y_s.t(), y_t.t())}


@register_method("dist_plus")
class DISTPlus(Method):
    """DIST+ (Huang et al. 2025), the feature-level extension; see the module docstring."""

    default_weight = 2.0
    default_ce_weight = 1.0

    @dataclass
    class Config:
        beta: float = 2.0
        gamma: float = 2.0
        iota: float = 1.0
        kappa: float = 1.0
        tau: float = 1.0
        student_layers: list[str] | None = None
        teacher_layers: list[str] | None = None

    def __init__(self, cfg, student, teacher, example):
        super().__init__(cfg, student, teacher, example)
        if cfg.tau <= 0:
            raise ConfigError(f"dist_plus: tau must be positive, got {cfg.tau}.")
        s_specs, t_specs = stage_pairs("dist_plus", cfg.student_layers, cfg.teacher_layers, student, teacher, last=1)
        if len(s_specs) != 1:
            raise ConfigError(f"dist_plus: name one student layer and one teacher layer, got {s_specs} and {t_specs}.")
        s_shapes, t_shapes = probe_shapes(student, teacher, s_specs, t_specs, require_example("dist_plus", example))
        s_shape, t_shape = s_shapes[s_specs[0]], t_shapes[t_specs[0]]
        require_maps("dist_plus", s_specs[0], s_shape, t_specs[0], t_shape)
        # channels only: positions are pooled to the smaller map in the loss
        self.connector = build_connector(s_shape, s_shape[:1] + t_shape[1:2] + s_shape[2:], s_specs[0], t_specs[0],
                                         need_maps=True)
        self.student_taps, self.teacher_taps = s_specs, t_specs

    def forward(self, ctx: Context) -> dict[str, Tensor]:
        c = self.cfg
        out = dist_loss(ctx.student_logits, ctx.teacher_logits, c.beta, c.gamma, c.tau)
        feats = feature_relations(self.connector(ctx.student_features[self.student_taps[0]]),
                                  ctx.teacher.features[self.teacher_taps[0]], c.tau)
        out["feat_inter"] = c.iota * feats["inter"]
        out["feat_intra"] = c.kappa * feats["intra"]
        return out
