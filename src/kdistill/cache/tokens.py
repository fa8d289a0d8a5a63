"""A teacher cache for causal LMs: the teacher's top-k next-token log-probabilities per
position, so training reads them instead of running the teacher.

Per token the cache keeps ``k`` log-probabilities at temperature 1 (float16) and their
token ids (int16 when the vocabulary fits, else int32): ``4 k`` bytes a token at
``k < 32768``, against ``4 V`` for float32 logits (DistillKit's top-k capture is the same
idea, with heavier compression). The losses compare the student with the cached
distribution on ``k + 1`` bins, the kept tokens plus a tail bin with the rest of the mass
(:mod:`kdistill.methods._token`), so the cached KL is exact for what was cached and equals
the live full-vocabulary KL at ``k = V`` (up to float16 rounding).

Files (``lm.cache_dir``): ``values.npy``, ``indices.npy`` (memory-mapped, ``(rows, block,
k)``), ``meta.json`` with fingerprints of the teacher's weights, the tokenizer and the
token data. A folder that holds a cache for another teacher, tokenizer, data or ``k`` is
refused, never silently reused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import atomic_write_json
from ..errors import ConfigError, DataError
from ..safe_read import LMCacheMeta, check_array, load_npy, read_json
from ..teachers import TokenTopK

# ``data`` below is a kdistill.lm.data.TokenDataset (the lm layer sits above this one)

FORMAT = "kdistill-lm-topk/1"


def module_fingerprint(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:32]


def tokenizer_fingerprint(tok) -> str:
    return hashlib.sha256(json.dumps(tok.identity(), sort_keys=True).encode()).hexdigest()[:32]


def cache_meta(teacher: torch.nn.Module, data: Any, tok, k: int) -> dict[str, Any]:
    k = min(int(k), tok.vocab_size)
    return {"format": FORMAT, "k": k, "vocab": tok.vocab_size, "rows": len(data), "block": int(data.input_shape[0]),
            "teacher": module_fingerprint(teacher), "tokenizer": tokenizer_fingerprint(tok), "data": data.fingerprint(),
            "value_dtype": "float16", "index_dtype": "int16" if tok.vocab_size <= 32767 else "int32"}


@torch.no_grad()
def write_lm_cache(teacher: torch.nn.Module, data: Any, tok, k: int, folder: str | Path,
                   batch_size: int = 64, log=print) -> dict[str, Any]:
    """Write (or reuse, when its fingerprints match) the top-k cache of ``teacher`` on ``data``."""
    folder = Path(folder)
    want = cache_meta(teacher, data, tok, k)
    meta_path = folder / "meta.json"
    if meta_path.is_file():
        have = read_json(meta_path, LMCacheMeta, hint=" Delete the cache folder to rebuild it.")
        keys = ("format", "k", "vocab", "rows", "block", "teacher", "tokenizer", "data")
        diff = [key for key in keys if have.get(key) != want[key]]
        if not diff:
            log(f"Reusing the teacher cache in {folder}.")
            return have
        raise ConfigError(f"{folder} holds a teacher cache made for another {', '.join(diff)}; delete it or "
                          "choose another lm.cache_dir.")
    folder.mkdir(parents=True, exist_ok=True)
    shape = (len(data), want["block"], want["k"])
    values = np.lib.format.open_memmap(folder / ".values.npy", "w+", np.float16, shape)
    indices = np.lib.format.open_memmap(folder / ".indices.npy", "w+", np.dtype(want["index_dtype"]), shape)
    was = teacher.training
    teacher.eval()
    device = next(teacher.parameters()).device
    try:
        for b in data.batches(batch_size):
            lp = F.log_softmax(teacher(b["x"].to(device)).float(), -1)
            v, i = lp.topk(want["k"], dim=-1)
            rows = b["index"].numpy()
            values[rows] = v.cpu().numpy().astype(np.float16)
            indices[rows] = i.cpu().numpy().astype(want["index_dtype"])
    finally:
        teacher.train(was)
    values.flush()
    indices.flush()
    del values, indices
    (folder / ".values.npy").replace(folder / "values.npy")
    (folder / ".indices.npy").replace(folder / "indices.npy")
    want["bytes_per_token"] = want["k"] * (2 + np.dtype(want["index_dtype"]).itemsize)
    atomic_write_json(meta_path, want)  # written last: a cache without meta.json is unfinished
    log(f"Teacher cache (top-{want['k']}, {want['bytes_per_token']} bytes/token) written to {folder}.")
    return want


def _checked_topk(folder: Path, meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``values.npy`` and ``indices.npy``, memory-mapped, checked against ``meta``: shape
    ``(rows, block, k)``, float values, integer indices inside the vocabulary (a truncated,
    pickled or replaced array is one :class:`DataError`)."""
    shape = (int(meta["rows"]), int(meta["block"]), int(meta["k"]))
    values = check_array(load_npy(folder / "values.npy", mmap=True, what="LM cache"), folder / "values.npy",
                         shape, "f")
    indices = check_array(load_npy(folder / "indices.npy", mmap=True, what="LM cache"), folder / "indices.npy",
                          shape, "iu")
    check_array(np.asarray(indices), folder / "indices.npy", lo=0, hi=int(meta["vocab"]) - 1)
    return values, indices


class LMCachedTeacher:
    """A teacher that answers training batches from a top-k cache (rows at
    ``batch["index"]``); it returns :class:`~kdistill.methods._token.TokenTopK`."""

    def __init__(self, folder: str | Path, data: Any):
        folder = Path(folder)
        if not (folder / "meta.json").is_file():
            raise DataError(f"No finished LM teacher cache in {folder} (no meta.json).")
        self.meta = read_json(folder / "meta.json", LMCacheMeta, hint=" Delete the cache folder to rebuild it.")
        if self.meta.get("format") != FORMAT:
            raise DataError(f"{folder}: not an LM top-k cache (format {self.meta.get('format')!r}).")
        if self.meta["data"] != data.fingerprint():
            raise DataError(f"{folder}: the cache was made for other token data; rebuild it.")
        self.values, self.indices = _checked_topk(folder, self.meta)
        self.num_classes = int(self.meta["vocab"])
        self.device = torch.device("cpu")

    def __call__(self, batch: dict, features: Sequence[str] = ()) -> TokenTopK:
        if "index" not in batch:
            raise DataError("The LM teacher cache answers training batches by row index only.")
        rows = np.sort(batch["index"].cpu().numpy())
        order = np.argsort(np.argsort(batch["index"].cpu().numpy()))
        v = torch.from_numpy(np.ascontiguousarray(self.values[rows][order])).to(self.device).float()
        i = torch.from_numpy(np.ascontiguousarray(self.indices[rows][order])).to(self.device).long()
        return TokenTopK(v, topk_logprobs=v, topk_indices=i)

    def to(self, device) -> LMCachedTeacher:
        self.device = torch.device(device)
        return self
