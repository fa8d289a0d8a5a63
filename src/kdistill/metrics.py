"""Evaluation metrics on logits: accuracy, NLL, ECE, agreement and KL to the teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in [0, 1]."""
    return float((logits.argmax(-1) == labels).float().mean())


def nll(logits: Tensor, labels: Tensor) -> float:
    """Mean negative log-likelihood of the labels (nats)."""
    return float(F.cross_entropy(logits.float(), labels))


def ece(logits: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Expected calibration error with ``n_bins`` equal-width confidence bins (Guo et al. 2017):
    ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|``."""
    probs = logits.float().softmax(-1)
    conf, pred = probs.max(-1)
    correct = (pred == labels).float()
    # bin b holds confidences in (b/n, (b+1)/n]
    bins = torch.clamp((conf * n_bins).ceil().long() - 1, 0, n_bins - 1)
    total = torch.zeros(n_bins).index_add_(0, bins.cpu(), torch.ones_like(conf).cpu())
    acc = torch.zeros(n_bins).index_add_(0, bins.cpu(), correct.cpu())
    cf = torch.zeros(n_bins).index_add_(0, bins.cpu(), conf.cpu())
    mask = total > 0
    return float(((acc[mask] - cf[mask]).abs()).sum() / len(labels))


def agreement(student_logits: Tensor, teacher_logits: Tensor) -> float:
    """Fraction of samples where student and teacher predict the same class."""
    return float((student_logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean())


def kl_to_teacher(student_logits: Tensor, teacher_logits: Tensor) -> float:
    """Mean ``KL(p_teacher || p_student)`` at T=1 (nats)."""
    lp_t = F.log_softmax(teacher_logits.float(), -1)
    lp_s = F.log_softmax(student_logits.float(), -1)
    return float((lp_t.exp() * (lp_t - lp_s)).sum(-1).mean())


def classification_metrics(logits: Tensor, labels: Tensor, teacher_logits: Tensor | None = None) -> dict:
    """All metrics for one set of logits; agreement and KL when teacher logits are given."""
    logits, labels = logits.float().cpu(), labels.cpu()
    keep = labels >= 0  # -1: a sample that could not be read (a skipped image): not scored
    if not bool(keep.all()):
        logits, labels = logits[keep], labels[keep]
        teacher_logits = None if teacher_logits is None else teacher_logits[keep.to(teacher_logits.device)]
    out = {"acc": accuracy(logits, labels), "nll": nll(logits, labels), "ece": ece(logits, labels)}
    if teacher_logits is not None:
        t = teacher_logits.float().cpu()
        out["agreement"] = agreement(logits, t)
        out["kl_to_teacher"] = kl_to_teacher(logits, t)
    return out


@torch.no_grad()
def predict_logits(model: nn.Module | callable, x, batch_size: int = 1024, device=None) -> Tensor:
    """Logits for every sample of ``x`` (a tensor of inputs, or a dataset: anything with
    ``batches(batch_size)``, read in dataset order), in eval mode, batched."""
    was = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
        device = device or next(iter(model.parameters()), torch.empty(0)).device
    outs = []
    inputs = (b["x"] for b in x.batches(batch_size)) if hasattr(x, "batches") else (
        x[i : i + batch_size] for i in range(0, x.shape[0], batch_size))
    for xb in inputs:
        if device is not None:
            xb = xb.to(device)
        outs.append(model(xb).float().cpu())
    if isinstance(model, nn.Module):
        model.train(was)
    return torch.cat(outs) if outs else torch.empty(0)
