"""Relational knowledge distillation (RKD): match distances and angles among the samples.

Park, Kim, Lu & Cho (2019), "Relational Knowledge Distillation", arXiv:1904.05068. On the
embeddings of a batch (student and teacher widths may differ):

* distance-wise: pairwise Euclidean distances, each network's divided by its own
  mean over distinct pairs, compared with the Huber loss (smooth L1, delta 1);
* angle-wise: for every triplet (i, j, k) with j distinct from i and k, the cosine
  of the angle at j, ``<e_ij, e_kj>`` with ``e_ij = (t_i - t_j) / ||t_i - t_j||``, compared
  with the Huber loss.

Both are averaged over their pairs / triplets and are invariant to a uniform scaling of
either embedding. Weights ``w_d = 25``, ``w_a = 50`` and the term weight 1 are the CRD
benchmark's (Tian et al. 2020, RepDistiller's RKD loss defaults). The loss is returned as
two parts, ``distance`` and ``angle``, already multiplied by ``w_d`` and ``w_a``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ._base import Context, Method
from ._pairs import embedding_pairs
from ._registry import register_method


def pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """(N, D) -> (N, N) Euclidean distances, exactly zero on the diagonal.

    Built from squared norms with a floor before the square root so coincident points give
    a zero, not a NaN, gradient.
    """
    sq = e.pow(2).sum(1)
    d2 = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2 * e @ e.t()).clamp_min(eps)
    d = d2.sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def rkd_distance_loss(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """Huber loss between mean-normalised pairwise distances (distinct pairs only)."""
    s, t = student_emb.float().flatten(1), teacher_emb.detach().float().flatten(1)
    off = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    d_s, d_t = pairwise_distances(s)[off], pairwise_distances(t)[off]
    d_s = d_s / d_s.mean().clamp_min(1e-12)
    d_t = d_t / d_t.mean().clamp_min(1e-12)
    return F.smooth_l1_loss(d_s, d_t)


def angles(e: Tensor) -> Tensor:
    """(N, D) -> (N, N, N) with ``[j, i, k] = <e_ij, e_kj>``, the cosine of the angle at ``j``."""
    unit = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)  # [j, i] = unit(e_i - e_j)
    return unit @ unit.transpose(1, 2)


def rkd_angle_loss(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """Huber loss between the cosines of all angles whose vertex differs from both ends."""
    s, t = student_emb.float().flatten(1), teacher_emb.detach().float().flatten(1)
    n = len(s)
    distinct = ~torch.eye(n, dtype=torch.bool, device=s.device)
    mask = distinct.unsqueeze(2) & distinct.unsqueeze(1)  # [j, i, k]: i != j and k != j
    return F.smooth_l1_loss(angles(s)[mask], angles(t)[mask])


@register_method("rkd")
class RKD(Method):
    """Distance-wise and angle-wise relational losses on the embeddings."""

    default_weight = 1.0

    @dataclass
    class Config:
        """Attributes:
            student_layers / teacher_layers: embedding taps (default: the pre-logit vectors).
            distance_weight / angle_weight: ``w_d`` and ``w_a`` (paper: 25 and 50).
        """

        student_layers: list[str] | None = None
        teacher_layers: list[str] | None = None
        distance_weight: float = 25.0
        angle_weight: float = 50.0

    def __init__(self, cfg, student, teacher, example):
        super().__init__(cfg, student, teacher, example)
        if cfg.distance_weight < 0 or cfg.angle_weight < 0:
            raise ConfigError("rkd: distance_weight and angle_weight must be non-negative.")
        self.student_taps, self.teacher_taps = embedding_pairs(
            "rkd", cfg.student_layers, cfg.teacher_layers, student, teacher
        )

    def forward(self, ctx: Context) -> dict[str, Tensor]:
        dist, ang = 0.0, 0.0
        for s, t in zip(self.student_taps, self.teacher_taps, strict=True):
            e_s, e_t = ctx.student_features[s], ctx.teacher.features[t]
            if len(e_s) < 3:
                raise ConfigError("rkd needs batches of at least 3 samples (angles relate triplets).")
            dist = dist + rkd_distance_loss(e_s, e_t)
            ang = ang + rkd_angle_loss(e_s, e_t)
        return {"distance": self.cfg.distance_weight * dist, "angle": self.cfg.angle_weight * ang}
