"""Several causal-LM teachers for one student (``teacher: {kind: multi, ...}``): fixed
weights, per-sample confidence weights (entropy, agreement with the label) or routing by
a record's column, through :class:`kdistill.teachers.EnsembleTeacher` (the image side's
ensemble, extended with weights) -- the members' next-token distributions mixed per
sample.

Routing reads the training records' ``field`` column (a ``.jsonl`` file): each record's
row (its token ids and targets) is looked up when a batch arrives, so a shuffled or split
dataset routes the same way. A row no record names is answered with ``weights`` (default:
all members equally).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..cache.tokens import LMCachedTeacher
from ..errors import ConfigError, DataError
from ..teachers import EnsembleTeacher, TeacherOutput
from .data import TokenDataset, read_jsonl, records_dataset
from .models import build_causal_lm, check_same_tokenizer, folder_tokenizer


def _key(x, y) -> bytes:
    return json.dumps([x, y]).encode()


def route_table(path: str, field: str, names: list[str], tok, block: int, columns: dict | None) -> dict[bytes, int]:
    """``{row key: member index}`` from the records' ``field`` column."""
    p = Path(path)
    if not (p.is_file() and p.suffix == ".jsonl"):
        raise ConfigError(f"teacher.weighting: route reads a .jsonl file's {field!r} column; data.train is {p.name}.")
    table: dict[bytes, int] = {}
    unknown = set()
    for i, r in enumerate(read_jsonl(p)):
        if field not in r:
            continue
        value = str(r[field])
        if value not in names:
            unknown.add(value)
            continue
        rec = {f: r[c] for f, c in columns.items()} if columns else r
        try:
            row = records_dataset([rec], tok, block, f"{p.name}: record {i}").take(torch.tensor([0]))
        except DataError:
            continue  # a record the dataset skips too
        table.setdefault(_key(row["x"][0].tolist(), row["y"][0].tolist()), names.index(value))
    if unknown:
        raise ConfigError(f"{p.name}: column {field!r} names {sorted(unknown)[:5]}, not teachers {names}; name each "
                          "member (teacher.members[].name) as the records do.")
    if not table:
        raise ConfigError(f"{p.name}: no record has a {field!r} column; routing needs one per record.")
    return table


class RowRouter:
    """``route(batch) -> (N,)`` member indices of the batch's rows (-1: none)."""

    def __init__(self, table: dict[bytes, int]):
        self.table = table

    def __call__(self, batch: dict) -> torch.Tensor:
        xs, ys = batch["x"].tolist(), batch["y"].tolist()
        return torch.tensor([self.table.get(_key(x, y), -1) for x, y in zip(xs, ys)])


class DenseCache:
    """A member read from a top-k cache, as full next-token log-probabilities: the kept
    tokens' log-probabilities, the rest of the mass spread evenly over the other tokens
    (exact at ``k`` = vocabulary)."""

    def __init__(self, cache: LMCachedTeacher, vocab: int):
        if cache.meta.get("vocab") != vocab:
            raise ConfigError(f"A cached member has a vocabulary of {cache.meta.get('vocab')}, the run {vocab}.")
        self.cache, self.vocab, self.num_classes = cache, vocab, vocab

    def __call__(self, batch: dict, features=()) -> TeacherOutput:
        top = self.cache(batch)
        v, i = top.topk_logprobs, top.topk_indices
        rest = self.vocab - v.shape[-1]
        tail = (1 - v.exp().sum(-1, keepdim=True)).clamp_min(1e-12)
        fill = (tail / rest).log() if rest > 0 else torch.full_like(tail, -1e30)
        dense = fill.expand(*v.shape[:-1], self.vocab).clone().scatter_(-1, i, v)
        return TeacherOutput(dense.to(batch["x"].device))

    def to(self, device):
        self.cache.to(device)
        return self

    def parameters(self):
        return iter(())


def multi_teacher(cfg, tok, train: TokenDataset, log) -> tuple[TokenDataset, EnsembleTeacher, dict[str, Any]]:
    """``(training data, the ensemble teacher, its record)`` for ``teacher.kind: multi``."""
    t = cfg.teacher
    if cfg.lm.regime != "supervised" or cfg.lm.cache_k is not None:
        raise ConfigError("Several teachers (teacher.kind: multi) train with lm.regime: supervised from the live "
                          "members (no lm.cache_k).")
    members = []
    for m in t.members:
        if m.cache is not None:
            members.append(DenseCache(LMCachedTeacher(m.cache, train), tok.vocab_size))
            continue
        check_same_tokenizer(folder_tokenizer(m.model) or tok, tok, "supervised")
        net, _ = build_causal_lm(m.model, {}, tok.vocab_size)
        members.append(net)
    names = t.names()
    router = None
    if t.weighting == "route":
        table = route_table(cfg.data.train, t.field, names, tok, cfg.data.block_size, cfg.data.columns())
        router = RowRouter(table)
        log(f"Routing {len(table)} records to {len(names)} teachers by their {t.field!r} column.")
    record = {"kind": "multi", "members": [m.model or f"cache:{m.cache}" for m in t.members], "names": names, "weighting": t.weighting,
              "weights": t.weights}
    return train, EnsembleTeacher(members, "mean_prob", t.weights, t.weighting, router), record
