"""Pure loss functions: no state, no modules.

Formulas follow Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural
Network", section 2: soft targets are a softmax at temperature ``T``; the soft-target
cross-entropy's gradients scale as ``1/T^2``, so the loss is multiplied by ``T^2`` to keep
its contribution comparable when ``T`` changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def soft_targets(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Class probabilities ``q_i = exp(z_i/T) / sum_j exp(z_j/T)``."""
    return F.softmax(logits / temperature, dim=-1)


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 4.0,
    reduction: str = "batchmean",
) -> Tensor:
    """``KL(p_teacher^T || p_student^T) * T^2``, averaged over the batch.

    Args:
        student_logits: ``(N, C)`` student logits.
        teacher_logits: ``(N, C)`` teacher logits (no gradient flows into them).
        temperature: softmax temperature ``T``.
        reduction: ``"batchmean"`` (one number) or ``"none"`` (one value per sample).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    per_sample = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1) * (t * t)
    if reduction == "none":
        return per_sample
    if reduction == "batchmean":
        return per_sample.mean()
    raise ValueError(f"unknown reduction {reduction!r}")


def hard_label_ce(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy with hard labels; labels ``< 0`` mark unlabeled samples (and ignored
    tokens, -100) and are skipped.

    A batch with no labelled sample gives zero (not NaN), which a transfer set of
    teacher-labelled inputs needs.
    """
    if logits.dim() > 2:  # per-token logits (N, L, V) with labels (N, L): a causal LM
        logits, labels = logits.flatten(0, -2), labels.flatten()
    # always the masked form: testing "all labelled?" first would be a host sync per step
    mask = labels >= 0
    safe = torch.where(mask, labels, torch.zeros_like(labels))
    per = F.cross_entropy(logits.float(), safe, reduction="none", label_smoothing=label_smoothing)
    return (per * mask).sum() / mask.sum().clamp_min(1)


def soft_target_ce(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy with target probabilities ``(N, K)`` (Mixup/CutMix labels). Rows of
    zeros mark samples without a label and are left out of the mean."""
    mask = target.sum(-1) > 0
    per = -(target.float() * F.log_softmax(logits.float(), dim=-1)).sum(-1)
    return (per * mask).sum() / mask.sum().clamp_min(1)


def kl_to_targets(student_logits: Tensor, log_target: Tensor, temperature: float = 4.0) -> Tensor:
    """``KL(target || softmax(student/T)) * T^2`` for a target given as log-probabilities.

    The general form behind :func:`kd_loss`: a mean-of-probabilities ensemble or a cached
    top-k teacher supplies its soft targets directly instead of as logits.
    """
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_target = log_target.detach().float()
    p = log_target.exp()
    # 0 * log 0 := 0 for targets with zero mass (top-k caches); a NaN target stays NaN
    return (torch.where(p == 0, torch.zeros_like(p), p * (log_target - log_p_s))).sum(-1).mean() * (t * t)
