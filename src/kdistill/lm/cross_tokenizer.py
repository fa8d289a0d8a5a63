"""A teacher with another tokenizer than the student's, for the cross-tokenizer methods
``uld`` and ``gold`` (:mod:`kdistill.methods._cross`).

For every training row the student's tokens are turned back into text, one document at a
time (the end-of-text token separates documents in both tokenizations), and encoded with
the teacher's tokenizer; the teacher runs on that. Each token's text span (byte offsets)
gives the alignment:

* ``pairs``: the student's predicted tokens in order with the teacher's predicted tokens
  from the same text onwards, ``i``-th to ``i``-th up to the shorter (ULD);
* ``groups``: runs of tokens that end at the same byte in both tokenizations (GOLD's
  spans); a span is kept when every student token in it is a training target.

A position ``t`` predicts token ``t + 1``: the first token of a row is predicted by no one,
so the first span (which holds it) is dropped. Alignments are computed once per distinct
row and kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..methods._cross import IGNORE_INDEX, CrossTokenOutput


def token_spans(tok, ids: list[int]) -> list[tuple[int, int]]:
    """``[(start, end)]`` byte offsets of each token of ``ids`` in the text they decode to;
    an end-of-text token is one byte of its own."""
    spans, at, seg_start, seg = [], 0, 0, []
    for t in ids:
        if t == tok.eos_id:
            spans.append((at, at + 1))
            at += 1
            seg_start, seg = at, []
            continue
        seg.append(t)
        end = seg_start + len(tok.decode(seg).encode("utf-8"))
        spans.append((min(at, end), end))
        at = max(at, end)
    return spans


def encode_like(s_tok, t_tok, ids: list[int]) -> list[int]:
    """The teacher's tokens for the text of the student's ``ids``, document by document."""
    out, seg = [], []
    for t in ids + [None]:
        if t is None or t == s_tok.eos_id:
            if seg:
                out += t_tok.encode(s_tok.decode(seg))
            if t is not None:
                out.append(t_tok.eos_id)
            seg = []
        else:
            seg.append(t)
    return out


def span_groups(s_spans, t_spans) -> list[tuple[list[int], list[int]]]:
    """Runs of token indices that end at the same byte in both lists."""
    groups, i, j = [], 0, 0
    while i < len(s_spans) and j < len(t_spans):
        gs, gt = [i], [j]
        while s_spans[gs[-1]][1] != t_spans[gt[-1]][1]:
            if s_spans[gs[-1]][1] < t_spans[gt[-1]][1]:
                if gs[-1] + 1 >= len(s_spans):
                    return groups
                gs.append(gs[-1] + 1)
            else:
                if gt[-1] + 1 >= len(t_spans):
                    return groups
                gt.append(gt[-1] + 1)
        groups.append((gs, gt))
        i, j = gs[-1] + 1, gt[-1] + 1
    return groups


def vocab_match(s_tok, t_tok) -> torch.Tensor:
    """``(V_student,)``: the teacher id of the token with the same text, or -1."""
    def texts(tok):
        out = {}
        for i in range(tok.vocab_size):
            text = "<eos>" if i == tok.eos_id else tok.decode([i])
            if text and "\ufffd" not in text:
                out.setdefault(text, i)
        return out

    t_map = texts(t_tok)
    m = torch.full((s_tok.vocab_size,), -1, dtype=torch.long)
    for text, i in texts(s_tok).items():
        m[i] = t_map.get(text, -1)
    return m


class CrossTokenizerTeacher:
    """A causal-LM teacher answering the student's batches through its own tokenizer."""

    def __init__(self, teacher: torch.nn.Module, t_tok, s_tok):
        self.teacher, self.t_tok, self.s_tok = teacher, t_tok, s_tok
        self.num_classes = t_tok.vocab_size
        self.matched = vocab_match(s_tok, t_tok)
        self._rows: dict[bytes, tuple] = {}

    def align(self, x: list[int], y: list[int]) -> tuple:
        """``(teacher ids, pairs, groups)`` of one student row."""
        key = torch.tensor(x + y).numpy().tobytes()
        if key in self._rows:
            return self._rows[key]
        targets = [t for t, v in enumerate(y) if v != IGNORE_INDEX]
        last = targets[-1] if targets else 0
        s_ids = x[: last + 1] + ([y[last]] if targets else [])
        t_ids = encode_like(self.s_tok, self.t_tok, s_ids) or [self.t_tok.eos_id]
        s_spans, t_spans = token_spans(self.s_tok, s_ids), token_spans(self.t_tok, t_ids)
        is_target = set(targets)
        groups = [([k - 1 for k in gs], [j - 1 for j in gt]) for gs, gt in span_groups(s_spans, t_spans)[1:]
                  if all(k - 1 in is_target for k in gs)]
        s_pred = [k for k in range(1, len(s_ids)) if k - 1 in is_target]
        start = s_spans[s_pred[0]][0] if s_pred else 1 << 62
        t_pred = [j for j in range(1, len(t_ids)) if t_spans[j][0] >= start]
        n = min(len(s_pred), len(t_pred))
        out = (t_ids, ([k - 1 for k in s_pred[:n]], [j - 1 for j in t_pred[:n]]), groups)
        if len(self._rows) < 1 << 16:
            self._rows[key] = out
        return out

    @torch.no_grad()
    def __call__(self, batch: dict, features: Sequence[str] = ()) -> CrossTokenOutput:
        rows = [self.align(x, y) for x, y in zip(batch["x"].tolist(), batch["y"].tolist())]
        width = max(len(r[0]) for r in rows)
        device = next(self.teacher.parameters()).device
        ids = torch.full((len(rows), width), self.t_tok.eos_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r[0])] = torch.tensor(r[0])
        was = self.teacher.training
        self.teacher.eval()
        try:
            logits = self.teacher(ids.to(device)).float()
        finally:
            self.teacher.train(was)
        targets = F.pad(ids[:, 1:], (0, 1), value=IGNORE_INDEX).to(device)
        return CrossTokenOutput(logits, teacher_targets=targets, pairs=[r[1] for r in rows],
                                groups=[r[2] for r in rows], matched=self.matched.to(device))

    def to(self, device):
        self.teacher.to(device)
        return self

    def parameters(self):
        return self.teacher.parameters()


def cross_methods(cfg) -> bool:
    """Whether every teacher-reading method of the run accepts another tokenizer (``uld``, ``gold``)."""
    from ..methods import METHODS

    classes = [METHODS.get(t.get("name")) for t in cfg.method_terms()]
    readers = [c for c in classes if c.needs_teacher]
    return bool(readers) and all(getattr(c, "cross_tokenizer", False) for c in readers)


def cross_teacher(cfg, teacher, tok):
    """The distiller's teacher for a run whose teacher has another tokenizer: ``teacher``
    wrapped in :class:`CrossTokenizerTeacher` (supervised regime, live teacher only)."""
    if cfg.lm.regime != "supervised" or cfg.lm.cache_k is not None:
        raise ConfigError("Cross-tokenizer distillation (uld, gold) runs with lm.regime: supervised and the live "
                          "teacher (no lm.cache_k): the cache and the generated batches are in one vocabulary.")
    return CrossTokenizerTeacher(teacher, teacher.tokenizer, tok)
