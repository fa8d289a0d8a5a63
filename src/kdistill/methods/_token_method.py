"""The base of the token-level methods: one divergence of :mod:`._token` as a loss term."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from ._base import Context, Method
from ._token import check_token_settings, token_loss
from ._token_chunked import HeadInput, chunked_token_loss


class TokenDivergence(Method):
    """A token-level divergence term. Subclasses set ``kind`` and, for a divergence with a
    coefficient, ``coef_name`` (the Config field that holds it).

    Used alone (``create("forward_kl", ...)``) the term gets no hard-label CE term
    (``default_ce_weight = 0``): TRL's GKDTrainer trains on the divergence only; add
    ``{"name": "ce"}`` to a list of terms for ``alpha * KD + (1 - alpha) * CE``.
    """

    kind: ClassVar[str] = ""
    coef_name: ClassVar[str] = ""
    default_ce_weight = 0.0

    def __init__(self, cfg, student, teacher, example):
        super().__init__(cfg, student, teacher, example)
        coef = getattr(cfg, self.coef_name) if self.coef_name else None
        check_token_settings(self.name, cfg.temperature, cfg.top_k, coef, self.coef_name)
        self.coef = 0.5 if coef is None else float(coef)

    def forward(self, ctx: Context) -> Tensor:
        return token_loss(self.kind, ctx.student_logits, ctx.teacher, ctx.labels,
                          self.cfg.temperature, self.coef, self.cfg.top_k)

    def chunked(self, student: HeadInput, teacher, labels: Tensor, chunk: int) -> Tensor:
        """The same loss from the student's hidden states, ``chunk`` positions at a time
        (:mod:`._token_chunked`); the teacher as :func:`chunked_token_loss` takes it."""
        return chunked_token_loss(self.kind, student, teacher, labels, self.cfg.temperature, self.coef,
                                  self.cfg.top_k, chunk)
