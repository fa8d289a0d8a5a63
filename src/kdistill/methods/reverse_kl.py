"""Reverse KL on every token: ``KL(q_student || p_teacher)`` per position.

MiniLLM (Gu et al. 2024, "MiniLLM: Knowledge Distillation of Large Language Models",
arXiv:2306.08543) argues for the reverse KL: mode-seeking, the student does not spend
mass where the teacher has little. (MiniLLM optimises it at the sequence level with
policy gradients; this term is its token-level form, as in GKD's ablations.)
"""

from __future__ import annotations

from dataclasses import dataclass

from ._registry import register_method
from ._token_method import TokenDivergence


@register_method("reverse_kl")
class ReverseKL(TokenDivergence):
    kind = "reverse_kl"

    @dataclass
    class Config:
        temperature: float = 1.0
        top_k: int | None = None
