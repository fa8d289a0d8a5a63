"""Skew KL of DistiLLM, per token: ``KL(p || alpha p + (1 - alpha) q)``.

Ko et al. (2024), "DistiLLM: Towards Streamlined Distillation for Large Language Models"
(ICML), arXiv:2402.03898. Mixing a little of the teacher into the student's side bounds
the divergence (by ``log(1/alpha)``) and its gradients where the student puts almost no
mass. alpha = 0 is the forward KL. Default alpha = 0.1 (the paper's).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._registry import register_method
from ._token_method import TokenDivergence


@register_method("skew_kl")
class SkewKL(TokenDivergence):
    kind = "skew_kl"
    coef_name = "alpha"

    @dataclass
    class Config:
        alpha: float = 0.1
        temperature: float = 1.0
        top_k: int | None = None
