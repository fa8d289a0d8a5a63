"""Sampling from a causal LM with a private random generator (reproducible, and without
touching the global RNG the trainer checkpoints).

Rows of a batch may have prompts of different lengths: rows are generated in groups of
equal prompt length, every group batched. A Hugging Face model (a :class:`CausalLM`)
decodes with its key/value cache: one forward over the prompt, then one token per step
(what ``transformers``' ``generate`` does), with the same sampling draws as the uncached
reference loop (:func:`sample` with ``cache=False``: a full forward per token).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _draw(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """The next token of every row from last-position logits ``(N, V)``."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, -1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _cached_steps(model: nn.Module, ids: Tensor, new_tokens: int, temperature: float,
                  generator: torch.Generator | None) -> Tensor:
    """Decode with the model's key/value cache: the prompt once, then one token a step."""
    hf, vocab = model.hf, model.vocab_size
    out = hf(input_ids=ids.long(), use_cache=True)
    new = []
    for step in range(new_tokens):
        nxt = _draw(out.logits[:, -1, :vocab], temperature, generator)
        new.append(nxt[:, None].to(ids.dtype))
        if step + 1 < new_tokens:
            out = hf(input_ids=new[-1].long(), use_cache=True, **_cache_kwargs(out))
    return torch.cat([ids, *new], 1)


def _cache_kwargs(out) -> dict:
    """The cache of a forward's output as the next call's keyword (``cache`` since
    transformers 5 on; ``past_key_values`` before)."""
    if "cache" in out.keys():
        return {"cache": out["cache"]}
    return {"past_key_values": out.past_key_values}


def supports_cache(model: nn.Module) -> bool:
    """Whether :func:`sample` can decode ``model`` with a key/value cache (a Hugging Face
    model wrapped as a :class:`~kdistill.lm.models.CausalLM`, not sharded by FSDP: calling
    the inner model directly would skip the wrapper's gathering of its parameters)."""
    hf = getattr(model, "hf", None)
    if hf is None or not hasattr(model, "vocab_size"):
        return False
    return not any(type(p).__name__ == "DTensor" for p in model.parameters())


@torch.no_grad()
def sample(model: nn.Module, prompt: Tensor, new_tokens: int, temperature: float = 1.0,
           generator: torch.Generator | None = None, cache: bool = True) -> Tensor:
    """``(N, P + new_tokens)``: ``prompt`` ``(N, P)`` continued by the model.

    ``temperature == 0`` is greedy decoding. ``model`` maps ids ``(N, L)`` to logits
    ``(N, L, V)``. ``cache``: decode with the model's key/value cache when it has one
    (the same draws from ``generator``; logits equal to rounding); ``False``: a full
    forward over the whole sequence per token.
    """
    was_training = model.training
    model.eval()
    ids = prompt
    try:
        if new_tokens > 0 and cache and supports_cache(model):
            return _cached_steps(model, ids, new_tokens, temperature, generator)
        for _ in range(new_tokens):
            nxt = _draw(model(ids)[:, -1], temperature, generator)
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
