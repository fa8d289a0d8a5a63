"""Forward KL on every token: ``KL(p_teacher || q_student)`` per position.

Word-level KD of Kim & Rush (2016), "Sequence-Level Knowledge Distillation" (EMNLP),
applied to causal LMs; the "supervised KD" baseline of GKD (Agarwal et al. 2024,
arXiv:2306.13649). Mass-covering: the student spreads over every mode of the teacher.
Defaults: temperature 1 (TRL's GKD losses divide logits by T and add no ``T**2``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._registry import register_method
from ._token_method import TokenDivergence


@register_method("forward_kl")
class ForwardKL(TokenDivergence):
    kind = "forward_kl"

    @dataclass
    class Config:
        temperature: float = 1.0
        #: compare on the teacher's top-k tokens + one tail bin (what a cache of k keeps)
        top_k: int | None = None
