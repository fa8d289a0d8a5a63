"""Sampling from a causal LM with a private random generator (reproducible, and without
touching the global RNG the trainer checkpoints).

Rows of a batch may have prompts of different lengths: rows are generated in groups of
equal prompt length, every group batched. No KV cache: the models this runs on CPU are
tiny, and a full forward per token keeps the code obviously right.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def sample(model: nn.Module, prompt: Tensor, new_tokens: int, temperature: float = 1.0,
           generator: torch.Generator | None = None) -> Tensor:
    """``(N, P + new_tokens)``: ``prompt`` ``(N, P)`` continued by the model.

    ``temperature == 0`` is greedy decoding. ``model`` maps ids ``(N, L)`` to logits
    ``(N, L, V)``.
    """
    was_training = model.training
    model.eval()
    ids = prompt
    try:
        for _ in range(new_tokens):
            logits = model(ids)[:, -1].float()
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                probs = torch.softmax(logits / temperature, -1)
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            ids = torch.cat([ids, nxt[:, None].to(ids.dtype)], 1)
    finally:
        model.train(was_training)
    return ids


def complete_rows(model: nn.Module, x: Tensor, prompt_len: Tensor, new_tokens: int | None, temperature: float,
                  generator: torch.Generator | None, ignore_index: int = -100, eos_id: int | None = None
                  ) -> tuple[Tensor, Tensor]:
    """Rows ``(x, y)`` of the same shape as ``x`` whose completions the model wrote.

    Each row keeps its prompt ``x[i, :prompt_len[i]]`` and gets ``min(new_tokens, L - P)``
    generated tokens; targets ``y`` are the generated tokens (prompt and the rest: -100).
    A generated end-of-text token ends the completion (its target kept, later ones masked).
    """
    n, length = x.shape
    out_x = x.clone()
    out_y = torch.full_like(x, ignore_index)
    for p in sorted(set(prompt_len.tolist())):
        rows = (prompt_len == p).nonzero().flatten()
        p = max(int(p), 1)
        k = length - p if new_tokens is None else min(new_tokens, length - p)
        if k <= 0:
            continue
        full = sample(model, x[rows, :p], k, temperature, generator)
        seq = full[:, : length + 1]
        out_x[rows, : seq.shape[1]] = seq[:, :length]
        tgt = torch.full((len(rows), length), ignore_index, dtype=x.dtype, device=x.device)
        tgt[:, p - 1 : p - 1 + k] = full[:, p : p + k]
        if eos_id is not None:  # mask what follows a generated end-of-text
            is_eos = tgt == eos_id
            after = (is_eos.cumsum(1) - is_eos.long()) > 0
            tgt[after] = ignore_index
        out_y[rows] = tgt
    return out_x, out_y
