"""Causal-LM metrics on a token dataset: perplexity, next-token accuracy, and the
student's top-1 agreement with and KL from the teacher (over positions with a target)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..methods._token_chunked import AUTO_ELEMENTS, auto_chunk
from .chunked import decoder_and_head, head_input
from .data import IGNORE_INDEX, TokenDataset


def _position_logits(model: nn.Module, x: Tensor, mask: Tensor):
    """``rows -> logits`` of the positions of ``mask`` (flattened), their count, and the rows
    to take at a time (all of them for full logits). A
    Hugging Face model whose batch of logits would exceed one ``lm.loss_chunk: auto`` chunk
    gives its hidden states, projected only for the rows asked (no ``(N, L, V)`` tensor)."""
    vocab = getattr(model, "vocab_size", None)
    if vocab and x.numel() * vocab > AUTO_ELEMENTS and decoder_and_head(model) is not None:
        head = head_input(model, x)
        hidden = head.hidden[mask]
        return (lambda rows: head.logits(hidden[rows]).float()), hidden.shape[0], auto_chunk(vocab)
    logits = model(x).float()[mask]
    return (lambda rows: logits[rows]), logits.shape[0], max(logits.shape[0], 1)


@torch.no_grad()
def lm_metrics(model: nn.Module, data: TokenDataset, batch_size: int, device, teacher: nn.Module | None = None
               ) -> dict[str, float]:
    """``nll`` (nats per target token), ``ppl = exp(nll)``, ``acc`` (next-token top-1) and,
    with a teacher, ``agreement`` (same top-1) and ``kl_teacher`` (KL(teacher || student)
    per token). Computed in fp32 in eval mode; at a large vocabulary, chunks of positions
    at a time (as the chunked token losses)."""
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
            student, count, chunk = _position_logits(model, x, mask)
            t_rows = _position_logits(teacher, x, mask)[0] if teacher is not None else None
            tgt_all = y[mask]
            for start in range(0, count, chunk):
                rows = slice(start, min(start + chunk, count))
                logits, tgt = student(rows), tgt_all[rows]
                nll += float(F.cross_entropy(logits, tgt, reduction="sum"))
                correct += float((logits.argmax(-1) == tgt).sum())
                if t_rows is not None:
                    t = t_rows(rows)
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
