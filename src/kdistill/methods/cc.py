"""CC: correlation congruence for knowledge distillation.

Peng et al. (2019), "Correlation Congruence for Knowledge Distillation", ICCV,
arXiv:1904.01802. Each network's pre-logit embedding goes through its own trainable
connector (linear to ``embed_dim`` + L2 normalisation, as RepDistiller's ``Embed``); the
batch correlation matrix ``C_ij = k(f_i, f_j)`` of each side uses the Gaussian RBF kernel
``k(x, y) = exp(-gamma ||x - y||^2)`` approximated by its order-``P`` Taylor expansion
(the paper's approximation). For unit vectors ``||x - y||^2 = 2 - 2 x.y``, so

    k(x, y) = exp(-2 gamma) * sum_{p=0..P} (2 gamma)^p / p! * (x.y)^p.

The loss is ``||C_t - C_s||_F^2 / b^2``. This is the kernel form of the
paper (also the form left in RepDistiller's source, P = 2, gamma = 0.4), not RepDistiller's
active shortcut of products of consecutive embedding differences.

Defaults: weight 0.02 and CE weight 1.0 (CRD benchmark recipe, Tian et al. 2020), embed
dim 128 (RepDistiller's ``feat_dim``), P = 2 and gamma = 0.4 (RepDistiller).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ._base import Context, Method
from ._pairs import embedding_pairs, probe_shapes, require_example
from ._registry import register_method


def rbf_taylor_correlation(embeddings: Tensor, gamma: float = 0.4, order: int = 2) -> Tensor:
    """``(b, b)`` Taylor-expanded Gaussian-RBF kernel of L2-normalised embeddings."""
    f = F.normalize(embeddings.float().flatten(1), p=2, dim=1)
    with torch.autocast(f.device.type, enabled=False):  # keep the kernel in fp32
        sim = f @ f.t()
    out = sim.new_zeros(sim.shape)
    for p in range(order + 1):
        out = out + (2 * gamma) ** p / math.factorial(p) * sim**p
    return math.exp(-2 * gamma) * out


def cc_loss(student_embeddings: Tensor, teacher_embeddings: Tensor, gamma: float = 0.4, order: int = 2
            ) -> Tensor:
    """``||C_t - C_s||_F^2 / b^2`` (Peng et al. 2019).

    Gradients flow into both sides: the teacher's embedding head is trained by this loss.
    """
    b = student_embeddings.shape[0]
    c_t = rbf_taylor_correlation(teacher_embeddings, gamma, order)
    diff = c_t - rbf_taylor_correlation(student_embeddings, gamma, order)
    return (diff * diff).sum() / (b * b)


class Embed(nn.Module):
    """Linear map of a flattened feature to ``dim``, then L2 normalisation."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.proj(x.flatten(1).float()), p=2, dim=1)


def one_embedding(method: str, cfg, student: nn.Module, teacher) -> tuple[list[str], list[str]]:
    """The single (student, teacher) embedding tap pair of an embedding method."""
    s, t = embedding_pairs(method, cfg.student_layers, cfg.teacher_layers, student, teacher)
    if len(s) != 1:
        raise ConfigError(f"Method {method!r} reads one embedding per network; got student {s}, teacher {t}.")
    return s, t


def embed_heads(method: str, student: nn.Module, teacher, s_spec: str, t_spec: str, example: Tensor | None,
                dim: int) -> tuple[Embed, Embed]:
    """Student and teacher :class:`Embed` heads sized by one probe pass of ``example``."""
    example = require_example(method, example)[:2]
    s_shapes, t_shapes = probe_shapes(student, teacher, [s_spec], [t_spec], example)
    return Embed(math.prod(s_shapes[s_spec][1:]), dim), Embed(math.prod(t_shapes[t_spec][1:]), dim)


@register_method("cc")
class CC(Method):
    """Correlation congruence (Peng et al. 2019); see the module docstring."""

    default_weight = 0.02
    default_ce_weight = 1.0

    @dataclass
    class Config:
        student_layers: list[str] | None = None
        teacher_layers: list[str] | None = None
        embed_dim: int = 128
        gamma: float = 0.4
        order: int = 2

    def __init__(self, cfg, student, teacher, example):
        super().__init__(cfg, student, teacher, example)
        if cfg.order < 0 or cfg.gamma <= 0 or cfg.embed_dim < 1:
            raise ConfigError(f"cc: need order >= 0, gamma > 0, embed_dim >= 1; got {cfg}.")
        self.student_taps, self.teacher_taps = one_embedding("cc", cfg, student, teacher)
        self.embed_s, self.embed_t = embed_heads(
            "cc", student, teacher, self.student_taps[0], self.teacher_taps[0], example, cfg.embed_dim
        )

    def forward(self, ctx: Context) -> Tensor:
        e_s = self.embed_s(ctx.student_features[self.student_taps[0]])
        # the teacher's features are fixed, but its embedding head trains with this loss
        e_t = self.embed_t(ctx.teacher.features[self.teacher_taps[0]].detach())
        return cc_loss(e_s, e_t, self.cfg.gamma, self.cfg.order)
