"""Total variation distance per token: ``0.5 * sum_v |p(v) - q(v)|``.

A bounded, symmetric divergence (in [0, 1]); one of the token-level losses compared by
Wen et al. (2023), "f-Divergence Minimization for Sequence-Level Knowledge Distillation"
(ACL), and offered by DistillKit.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._registry import register_method
from ._token_method import TokenDivergence


@register_method("tvd")
class TotalVariation(TokenDivergence):
    kind = "tvd"

    @dataclass
    class Config:
        temperature: float = 1.0
        top_k: int | None = None
