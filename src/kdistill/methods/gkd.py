"""Generalised Jensen-Shannon divergence of GKD, per token.

Agarwal et al. (2024), "On-Policy Distillation of Language Models: Learning from
Self-Generated Mistakes" (ICLR), arXiv:2306.13649:
``JSD(beta) = beta KL(p || m) + (1 - beta) KL(q || m)``, ``m = beta p + (1 - beta) q``
(p teacher, q student). ``JSD/beta`` tends to the forward KL as beta -> 0 and
``JSD/(1-beta)`` to the reverse KL as beta -> 1; as in TRL's ``generalized_jsd_loss``,
beta = 0 and beta = 1 *are* those KLs. Default beta = 0.5 (TRL's GKDConfig), temperature 1.
The on-policy part of GKD (the student's own samples) is the LM task's
``lm.regime: on_policy``; this term is the divergence only.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._registry import register_method
from ._token_method import TokenDivergence


@register_method("gkd")
class GKD(TokenDivergence):
    kind = "jsd"
    coef_name = "beta"

    @dataclass
    class Config:
        beta: float = 0.5
        temperature: float = 1.0
        top_k: int | None = None
