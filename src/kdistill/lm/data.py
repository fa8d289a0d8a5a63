"""Token datasets for causal LMs, read from local text files.

A sample is a row of ``block_size`` token ids ``x`` and its targets ``y``: ``y[t]`` is the
token that follows ``x[t]`` (the targets are already shifted, so logits at position ``t``
are compared with ``y[t]``), and ``-100`` marks positions without a target (prompt tokens,
padding). :class:`TokenDataset` implements the dataset protocol of
:mod:`kdistill.data.protocol`, so the Trainer reads it through the device-resident loader.

* Plain text (``.txt``, or a folder of them): tokenized, each document ended by the
  end-of-text token, concatenated and cut into blocks of ``block_size + 1`` tokens that
  overlap by one (every token is a target once). Prompts (for generation) are the first
  ``prompt_tokens`` tokens of a block.
* JSONL: ``{"prompt", "completion"}`` records (targets on the completion and its
  end-of-text token only) or ``{"text"}`` records (targets everywhere); one record per
  row, cut to ``block_size + 1`` tokens, padded on the right (pads are never attended to by
  a causal model's earlier positions, and have no target).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..data.tokens import IGNORE_INDEX, TokenDataset
from ..errors import DataError

__all__ = ["IGNORE_INDEX", "TokenDataset", "load_text_dataset", "pack_text", "read_documents", "read_jsonl", "records_dataset"]


def _text_file(p: Path) -> bool:
    """A folder's text files: regular files (not links: Debian's fortune folders link
    ``name.u8`` to ``name``) named ``*.txt`` or without a suffix, not hidden."""
    return p.is_file() and not p.is_symlink() and not p.name.startswith(".") and p.suffix in ("", ".txt")


def read_documents(path: Path, separator: str | None) -> list[str]:
    """The documents of a text file (split at lines equal to ``separator``) or of every
    text file of a folder (``*.txt`` or no suffix), in name order."""
    files = sorted(p for p in path.rglob("*") if _text_file(p)) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path} holds no text files.")
    docs: list[str] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            text = f.read_bytes().decode("latin-1")
        if separator is None:
            docs.append(text)
            continue
        part: list[str] = []
        for line in text.splitlines(keepends=True):
            if line.rstrip("\r\n") == separator:
                if part:
                    docs.append("".join(part))
                part = []
            else:
                part.append(line)
        if part:
            docs.append("".join(part))
    return [d for d in docs if d.strip()]


def pack_text(docs: list[str], tokenizer, block_size: int, prompt_tokens: int, name: str,
              max_blocks: int | None = None) -> TokenDataset:
    ids: list[int] = []
    for d in docs:
        ids.extend(tokenizer.encode(d))
        ids.append(tokenizer.eos_id)
    n = (len(ids) - 1) // block_size
    if max_blocks is not None:
        n = min(n, max_blocks)
    if n < 1:
        raise DataError(f"{name}: {len(ids)} tokens make no block of {block_size + 1}; use more text or a "
                        "smaller data.block_size.")
    t = torch.tensor(ids[: n * block_size + 1], dtype=torch.int64)
    x = t[:-1].reshape(n, block_size)
    y = t[1:].reshape(n, block_size)
    plen = torch.full((n,), min(prompt_tokens, block_size - 1), dtype=torch.int64)
    return TokenDataset(x, y, plen, tokenizer.vocab_size, name)


def records_dataset(records: list[dict], tokenizer, block_size: int, name: str,
                    max_blocks: int | None = None) -> TokenDataset:
    """Rows from ``{"prompt", "completion"}`` / ``{"text"}`` records (or token-id records
    ``{"prompt_ids", "completion_ids"}``, the sequence-level transfer set's form)."""
    rows, ys, plens = [], [], []
    for i, r in enumerate(records):
        if "prompt_ids" in r:
            p, c = list(r["prompt_ids"]), list(r["completion_ids"])
        elif "prompt" in r and "completion" in r:
            p, c = tokenizer.encode(str(r["prompt"])), tokenizer.encode(str(r["completion"]))
        elif "text" in r:
            p, c = [], tokenizer.encode(str(r["text"]))
        else:
            raise DataError(f"{name}: record {i} has neither 'prompt' and 'completion' nor 'text': {sorted(r)}.")
        seq = (p + c + [tokenizer.eos_id])[: block_size + 1]
        if len(seq) < 2:
            continue
        x = seq[:-1] + [tokenizer.eos_id] * (block_size + 1 - len(seq))
        # y[t] = seq[t+1] where seq[t+1] is a completion token; prompt and padding: -100
        y = [seq[t + 1] if t + 1 >= len(p) and t + 1 < len(seq) else IGNORE_INDEX for t in range(block_size)]
        rows.append(x)
        ys.append(y)
        plens.append(min(len(p), block_size - 1) if p else 0)
        if max_blocks is not None and len(rows) >= max_blocks:
            break
    if not rows:
        raise DataError(f"{name}: no usable record.")
    ds = TokenDataset(torch.tensor(rows), torch.tensor(ys), torch.tensor(plens), tokenizer.vocab_size, name)
    if ds.targets() == 0:
        raise DataError(f"{name}: every completion was cut off by data.block_size={block_size}; raise it.")
    return ds


def read_jsonl(path: Path) -> list[dict]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise DataError(f"{path}:{n}: not JSON ({e}).") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{n}: a record must be a JSON object.")
        out.append(rec)
    return out


def load_text_dataset(path: str, tokenizer, block_size: int, prompt_tokens: int = 16,
                      separator: str | None = None, max_blocks: int | None = None) -> TokenDataset:
    """A :class:`TokenDataset` from a ``.txt`` / ``.jsonl`` file or a folder of text files."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"Text data {path!r} not found.")
    if p.is_file() and p.suffix == ".jsonl":
        return records_dataset(read_jsonl(p), tokenizer, block_size, p.name, max_blocks)
    return pack_text(read_documents(p, separator), tokenizer, block_size, prompt_tokens, p.name, max_blocks)
