"""The token losses of :mod:`._token` (and the hard-label CE) computed over chunks of
positions, from the final hidden states, so the ``(positions, vocabulary)`` logits never
exist whole.

The student's logits of one chunk (``chunk`` positions x ``V``) are made inside the chunk
(hidden states times the output projection), the divergence is summed there, and in the
backward pass the chunk's logits are made again (``torch.utils.checkpoint``, non-reentrant)
instead of being kept: peak memory grows with the chunk, not with tokens x vocabulary (the
idea of Liger-Kernel's fused linear JSD and TRL's chunked JSD). The teacher enters the same
way: its hidden states and projection (a live teacher, no gradient), its top-k tokens (a
cache: ``k`` values a position, no full-vocabulary teacher logits at all), or, as a
fallback, its full logits sliced per chunk.

Values are those of :func:`._token.token_loss` (the same :func:`._token.divergence` on
each chunk, the same masked mean), up to the order of float32 sums.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from ..teachers import TeacherOutput
from ._token import IGNORE_INDEX, TokenTopK, divergence, topk_tail, truncate_topk

#: the default number of positions per chunk of the functions below
DEFAULT_CHUNK = 1024

#: ``lm.loss_chunk: auto`` keeps a chunk's logits near this many elements (64 MiB in float32;
#: a chunk's forward and backward hold about a dozen tensors of that size at once)
AUTO_ELEMENTS = 1 << 24


def auto_chunk(vocab: int) -> int:
    """Positions per chunk for ``lm.loss_chunk: auto``: 1024, fewer for a large vocabulary
    (512 at 32,768 tokens, 128 at 131,072), at least 16."""
    return min(DEFAULT_CHUNK, max(16, AUTO_ELEMENTS // max(int(vocab), 1)))


@dataclass
class HeadInput:
    """Positions' final hidden states ``(..., H)`` and the linear output projection
    (``weight`` ``(V', H)``, ``bias`` ``(V',)`` or ``None``) that makes them logits; only
    the first ``vocab`` rows are the tokenizer's (a padded embedding's others are dropped)."""

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None
    vocab: int

    def logits(self, h: Tensor) -> Tensor:
        w, b = self.weight, self.bias
        if w.shape[0] != self.vocab:
            w = w[: self.vocab]
            b = None if b is None else b[: self.vocab]
        return F.linear(h, w, b)


def _sum_over_chunks(n: int, chunk: int, fn: Callable[[slice], Tensor], like: Tensor) -> Tensor:
    """``sum(fn(rows) for rows in chunks)``, each chunk recomputed in the backward pass."""
    if chunk < 1:
        raise ConfigError(f"The loss chunk must be a positive number of positions, got {chunk}.")
    total = like.new_zeros((), dtype=torch.float32)
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        if torch.is_grad_enabled():
            total = total + checkpoint(fn, rows, use_reentrant=False)
        else:
            total = total + fn(rows)
    return total


def _teacher_side(teacher, n: int, temperature: float, top_k: int | None
                  ) -> Callable[[slice, Tensor], tuple[Tensor, Tensor]]:
    """``(rows, log_q) -> (log_p, log_q)`` for one chunk: the teacher's log-probabilities
    (and the student's, coarsened to top-k + tail for a top-k teacher)."""
    if isinstance(teacher, TokenTopK) and teacher.topk_logprobs is not None:
        k = teacher.topk_logprobs.shape[-1]
        lp_k, idx = teacher.topk_logprobs.reshape(n, k), teacher.topk_indices.reshape(n, k)
        return lambda rows, log_q: topk_tail(log_q, lp_k[rows].detach(), idx[rows])

    if isinstance(teacher, HeadInput):
        t_hidden = teacher.hidden.reshape(n, -1).detach()

        def t_logits(rows):
            with torch.no_grad():
                return teacher.logits(t_hidden[rows]).detach()
    else:
        flat = teacher.logits.reshape(n, -1)
        members = teacher.member_logits
        members = None if members is None else members.reshape(members.shape[0], n, -1)

        def t_logits(rows):
            if members is None:
                return flat[rows].detach()
            return TeacherOutput(flat[rows], member_logits=members[:, rows], combine=teacher.combine)

    def side(rows, log_q):
        t = t_logits(rows)
        if top_k:
            logits = t.logits if isinstance(t, TeacherOutput) else t
            lp_k, idx = truncate_topk(F.log_softmax(logits.detach().float(), dim=-1), top_k)
            return topk_tail(log_q, lp_k.detach(), idx)
        out = t if isinstance(t, TeacherOutput) else TeacherOutput(t)
        return out.log_soft_targets(temperature).detach(), log_q

    return side


def _check(student: HeadInput, teacher, labels: Tensor, temperature: float, top_k: int | None) -> None:
    if labels.shape != student.hidden.shape[:-1]:
        raise ConfigError(f"Chunked token losses need one label per position: labels {tuple(labels.shape)} "
                          f"for hidden states {tuple(student.hidden.shape)}.")
    topk = isinstance(teacher, TokenTopK) and teacher.topk_logprobs is not None
    if (topk or top_k) and temperature != 1.0:
        raise ConfigError(
            "A top-k teacher (cache or top_k setting) is compared with a tail bin, which is defined at "
            f"temperature 1 only; got temperature {temperature}. Set temperature: 1.0 or drop top_k."
        )
    if not topk:
        t_vocab = teacher.vocab if isinstance(teacher, HeadInput) else teacher.logits.shape[-1]
        if t_vocab != student.vocab:
            raise ConfigError(
                f"Teacher and student vocabularies differ ({t_vocab} vs {student.vocab} logits per token): "
                "token-level distillation needs one shared tokenizer. Use the same tokenizer, or sequence-level "
                "KD (lm.regime: sequence), which needs no shared vocabulary."
            )


def chunked_token_loss(kind: str, student: HeadInput, teacher: HeadInput | TeacherOutput, labels: Tensor,
                       temperature: float = 1.0, coef: float = 0.5, top_k: int | None = None,
                       chunk: int = DEFAULT_CHUNK) -> Tensor:
    """:func:`._token.token_loss` over chunks of ``chunk`` positions.

    Args:
        student: the student's hidden states and output projection.
        teacher: the teacher's (:class:`HeadInput`), a :class:`._token.TokenTopK`, or any
            :class:`~kdistill.teachers.TeacherOutput` with per-position logits.
        labels: ``(...)``, one per position; ``-100`` positions take no part.
    """
    _check(student, teacher, labels, temperature, top_k)
    n = labels.numel()
    h = student.hidden.reshape(n, -1)
    mask = (labels != IGNORE_INDEX).reshape(n).float()
    side = _teacher_side(teacher, n, temperature, top_k)
    device = h.device.type

    def one(rows: slice) -> Tensor:
        logits = student.logits(h[rows])
        with torch.autocast(device, enabled=False):
            log_q = F.log_softmax(logits.float() / temperature, dim=-1)
            log_p, log_q = side(rows, log_q)
            return (divergence(kind, log_p, log_q, coef) * mask[rows]).sum()

    return _sum_over_chunks(n, chunk, one, h) / mask.sum().clamp_min(1)


def chunked_ce(student: HeadInput, labels: Tensor, label_smoothing: float = 0.0,
               chunk: int = DEFAULT_CHUNK) -> Tensor:
    """:func:`kdistill.losses.hard_label_ce` (per-token labels, ``< 0`` skipped) over chunks."""
    n = labels.numel()
    h = student.hidden.reshape(n, -1)
    flat = labels.reshape(n)
    mask = flat >= 0
    safe = torch.where(mask, flat, torch.zeros_like(flat))
    device = h.device.type

    def one(rows: slice) -> Tensor:
        logits = student.logits(h[rows])
        with torch.autocast(device, enabled=False):
            per = F.cross_entropy(logits.float(), safe[rows], reduction="none", label_smoothing=label_smoothing)
            return (per * mask[rows]).sum()

    return _sum_over_chunks(n, chunk, one, h) / mask.sum().clamp_min(1)
