"""Causal-LM metrics on a token dataset: perplexity, next-token accuracy, and the
student's top-1 agreement with and KL from the teacher (over positions with a target)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .data import IGNORE_INDEX, TokenDataset


@torch.no_grad()
def lm_metrics(model: nn.Module, data: TokenDataset, batch_size: int, device, teacher: nn.Module | None = None
               ) -> dict[str, float]:
    """``nll`` (nats per target token), ``ppl = exp(nll)``, ``acc`` (next-token top-1) and,
    with a teacher, ``agreement`` (same top-1) and ``kl_teacher`` (KL(teacher || student)
    per token). Computed in fp32 in eval mode."""
    was = model.training
    model.eval()
    nll = correct = agree = kl = 0.0
    n = 0
    try:
        for b in data.batches(batch_size):
            x, y = b["x"].to(device), b["y"].to(device)
            mask = y != IGNORE_INDEX
            if not mask.any():
                continue
            logits = model(x).float()[mask]
            tgt = y[mask]
            nll += float(F.cross_entropy(logits, tgt, reduction="sum"))
            correct += float((logits.argmax(-1) == tgt).sum())
            if teacher is not None:
                t = teacher(x).float()[mask]
                agree += float((logits.argmax(-1) == t.argmax(-1)).sum())
                lp, lq = F.log_softmax(t, -1), F.log_softmax(logits, -1)
                kl += float((lp.exp() * (lp - lq)).sum())
            n += int(mask.sum())
    finally:
        model.train(was)
    n = max(n, 1)
    out = {"nll": nll / n, "ppl": math.exp(min(nll / n, 700.0)), "acc": correct / n, "tokens": float(n)}
    if teacher is not None:
        out |= {"agreement": agree / n, "kl_teacher": kl / n}
    return out
