"""Skew reverse KL of DistiLLM, per token: ``KL(q || (1 - alpha) p + alpha q)``.

Ko et al. (2024), arXiv:2402.03898 (see :mod:`.skew_kl`); alpha = 0 is the reverse KL.
Default alpha = 0.1 (the paper's).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._registry import register_method
from ._token_method import TokenDivergence


@register_method("skew_reverse_kl")
class SkewReverseKL(TokenDivergence):
    kind = "skew_reverse_kl"
    coef_name = "alpha"

    @dataclass
    class Config:
        alpha: float = 0.1
        temperature: float = 1.0
        top_k: int | None = None
