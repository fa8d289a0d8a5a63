"""Token-level divergences between a teacher's and a student's next-token distributions.

Shared by the language-model methods (``forward_kl``, ``reverse_kl``, ``gkd``, ``skew_kl``,
``skew_reverse_kl``, ``tvd``). Logits are ``(..., V)``: ``(N, L, V)`` for a causal LM,
``(N, C)`` for a classifier. Every divergence is computed in float32 whatever the
autocast dtype (bf16 reductions over a vocabulary can make a KL negative).

Conventions:

* ``p`` is the teacher's distribution, ``q`` the student's, both at temperature ``T``
  (``softmax(logits / T)``); no ``T**2`` factor (as TRL's ``generalized_jsd_loss``).
* A position takes part when its label is not ``-100`` (Hugging Face's ignore index: padding
  and prompt tokens); the loss is the mean over the positions that take part (TRL's
  ``batchmean`` over unmasked tokens), zero when none does.
* ``0 * log 0 = 0``: a distribution may put zero mass on some tokens (a top-k teacher).

Top-k + tail: a teacher known only by its ``k`` most likely tokens and their
log-probabilities (a cache) is compared on ``k + 1`` bins: the ``k`` tokens and one *tail*
bin holding the rest of the mass (``1 - sum p_topk`` for the teacher, the student's
probability of every other token for the student). Every divergence is then exact for
the cached (coarsened) distribution, and equals the full-vocabulary one at ``k = V``.
The tail bin is defined at ``T = 1`` only: the teacher's tail mass at another
temperature would need the logits that were not kept.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..teachers import TeacherOutput, TokenTopK  # noqa: F401  (TokenTopK: re-exported)

IGNORE_INDEX = -100

TAIL_FLOOR = 1e-6

KINDS = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd")


def _xlogy_diff(p: Tensor, log_p: Tensor, log_q: Tensor) -> Tensor:
    """``sum p * (log p - log q)`` over the last axis with ``0 * log 0 = 0``."""
    term = p * (log_p - log_q)
    return torch.where(p == 0, torch.zeros_like(term), term).sum(-1)


def _mix(log_a: Tensor, log_b: Tensor, w: float) -> Tensor:
    """``log(w * a + (1 - w) * b)`` for ``0 < w < 1``, stably."""
    return torch.logaddexp(log_a + math.log(w), log_b + math.log1p(-w))


def divergence(kind: str, log_p: Tensor, log_q: Tensor, coef: float = 0.5) -> Tensor:
    """Per-position divergence between teacher ``p`` and student ``q`` (log-probabilities,
    same support on the last axis).

    Args:
        kind: ``forward_kl`` KL(p||q); ``reverse_kl`` KL(q||p) (MiniLLM); ``jsd`` the
            generalised JSD of GKD (Agarwal et al. 2024), ``coef`` = beta:
            ``beta KL(p||m) + (1-beta) KL(q||m)``, ``m = beta p + (1-beta) q``, with TRL's
            convention beta = 0 -> KL(p||q), beta = 1 -> KL(q||p) (the limits of
            ``JSD/beta`` and ``JSD/(1-beta)``); ``skew_kl`` KL(p || a p + (1-a) q) and
            ``skew_reverse_kl`` KL(q || (1-a) p + a q) (DistiLLM, Ko et al. 2024),
            ``coef`` = alpha; ``tvd`` total variation ``0.5 sum |p - q|``.
    """
    p, q = log_p.exp(), log_q.exp()
    if kind == "forward_kl":
        return _xlogy_diff(p, log_p, log_q)
    if kind == "reverse_kl":
        return _xlogy_diff(q, log_q, log_p)
    if kind == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    if kind == "jsd":
        if coef <= 0:
            return _xlogy_diff(p, log_p, log_q)
        if coef >= 1:
            return _xlogy_diff(q, log_q, log_p)
        log_m = _mix(log_p, log_q, coef)
        return coef * _xlogy_diff(p, log_p, log_m) + (1 - coef) * _xlogy_diff(q, log_q, log_m)
    if kind == "skew_kl":
        log_m = log_p if coef >= 1 else (log_q if coef <= 0 else _mix(log_p, log_q, coef))
        return _xlogy_diff(p, log_p, log_m)
    if kind == "skew_reverse_kl":
        log_m = log_q if coef >= 1 else (log_p if coef <= 0 else _mix(log_q, log_p, coef))
        return _xlogy_diff(q, log_q, log_m)
    raise ConfigError(f"Unknown token divergence {kind!r}; use one of {', '.join(KINDS)}.")


def topk_tail(log_q_full: Tensor, topk_logprobs: Tensor, topk_indices: Tensor) -> tuple[Tensor, Tensor]:
    """``(log_p, log_q)`` on ``k + 1`` bins: the teacher's top-k tokens plus a tail bin.

    Args:
        log_q_full: the student's log-probabilities over the vocabulary, ``(..., V)``.
        topk_logprobs: the teacher's log-probabilities of its top-k tokens, ``(..., k)``.
        topk_indices: those tokens, ``(..., k)``.
    """
    idx = topk_indices.long()
    lp_k = topk_logprobs.float()
    lq_k = log_q_full.gather(-1, idx)
    if idx.shape[-1] >= log_q_full.shape[-1]:  # every token kept: no tail for either side
        return lp_k, lq_k
    # teacher tail: log(1 - sum p_k), floored at TAIL_FLOOR: rounding (an fp16 cache) can
    # make the kept mass reach 1, and a zero tail would make the reverse KL infinite
    mass = torch.logsumexp(lp_k, -1, keepdim=True).clamp(max=0.0)
    lp_tail = torch.log((-torch.expm1(mass)).clamp_min(TAIL_FLOOR))
    # student tail: the mass on every other token, summed exactly (not 1 - sum q_k)
    lq_tail = torch.logsumexp(log_q_full.scatter(-1, idx, float("-inf")), -1, keepdim=True)
    return torch.cat([lp_k, lp_tail], -1), torch.cat([lq_k, lq_tail], -1)


def truncate_topk(log_p_full: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top-k log-probabilities and indices of a full teacher distribution (what a
    top-k cache stores), for ``top_k`` with a live teacher."""
    k = min(int(k), log_p_full.shape[-1])
    values, indices = log_p_full.topk(k, dim=-1)
    return values, indices


def token_mask(labels: Tensor, logits: Tensor) -> Tensor:
    """``True`` where a position takes part: ``labels != -100`` when labels align with the
    logits' positions, else every position."""
    if labels.shape == logits.shape[:-1]:
        return labels != IGNORE_INDEX
    return torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)


def masked_mean(per_position: Tensor, mask: Tensor) -> Tensor:
    """Mean over the positions of ``mask`` (zero when none; no host sync)."""
    m = mask.to(per_position.dtype)
    return (per_position * m).sum() / m.sum().clamp_min(1)


def token_loss(
    kind: str,
    student_logits: Tensor,
    teacher: TeacherOutput,
    labels: Tensor,
    temperature: float = 1.0,
    coef: float = 0.5,
    top_k: int | None = None,
) -> Tensor:
    """The masked mean of :func:`divergence` over a batch.

    The teacher is either a full distribution (``teacher.logits``, ``(..., V)``) or a
    :class:`TokenTopK`; ``top_k`` truncates a full teacher to its top-k + tail (what a
    cache of ``k`` tokens would give).
    """
    # autocast off: under bf16/fp16 autocast the losses still run in float32 (the logits are
    # cast up first; a reduction over the vocabulary in bf16 can make a KL negative)
    with torch.autocast(student_logits.device.type, enabled=False):
        return _token_loss(kind, student_logits, teacher, labels, temperature, coef, top_k)


def _token_loss(kind: str, student_logits: Tensor, teacher: TeacherOutput, labels: Tensor, temperature: float,
                coef: float, top_k: int | None) -> Tensor:
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    mask = token_mask(labels, student_logits)
    topk = isinstance(teacher, TokenTopK) and teacher.topk_logprobs is not None
    if topk or top_k:
        if temperature != 1.0:
            raise ConfigError(
                "A top-k teacher (cache or top_k setting) is compared with a tail bin, which is defined at "
                f"temperature 1 only; got temperature {temperature}. Set temperature: 1.0 or drop top_k."
            )
        if topk:
            lp_k, idx = teacher.topk_logprobs, teacher.topk_indices
        else:
            lp_full = F.log_softmax(teacher.logits.detach().float(), dim=-1)
            lp_k, idx = truncate_topk(lp_full, top_k)
        log_p, log_q = topk_tail(log_q, lp_k.detach(), idx)
    else:
        t_logits = teacher.logits.detach()
        if t_logits.shape[-1] != student_logits.shape[-1]:
            raise ConfigError(
                f"Teacher and student vocabularies differ ({t_logits.shape[-1]} vs {student_logits.shape[-1]} "
                "logits per token): token-level distillation needs one shared tokenizer. Use the same "
                "tokenizer, or sequence-level KD (lm.regime: sequence), which needs no shared vocabulary."
            )
        log_p = teacher.log_soft_targets(temperature).detach()
    return masked_mean(divergence(kind, log_p, log_q, coef), mask)


def check_token_settings(name: str, temperature: float, top_k: int | None, coef: float | None = None,
                         coef_name: str = "") -> None:
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ConfigError(f"{name}: temperature must be a positive number, got {temperature}.")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ConfigError(f"{name}: top_k must be a positive integer or null, got {top_k!r}.")
    if coef is not None and not 0.0 <= coef <= 1.0:
        raise ConfigError(f"{name}: {coef_name} must lie in [0, 1], got {coef}.")
