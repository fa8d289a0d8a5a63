"""Token-level distillation across tokenizers: what a teacher with another vocabulary
gives the loss (:class:`CrossTokenOutput`, made by :mod:`kdistill.lm.cross_tokenizer`),
and the two distances of the methods ``uld`` and ``gold``.

* ULD (Boizard et al. 2024, "Towards Cross-Tokenizer Distillation: the Universal Logit
  Distillation Loss for LLMs"): the student's ``i``-th predicted token is paired with the
  teacher's ``i``-th; the distance between the two next-token distributions is the L1
  distance between their probabilities sorted in decreasing order, the shorter vocabulary
  padded with zeros (the Wasserstein-1 distance between the two sorted distributions
  with unit cost between ranks, as the paper's closed form).
* GOLD-style (TRL's GOLD trainer): tokens are grouped into spans that cover the same text
  in both tokenizations; a span's distribution is its first position's distribution times
  the probabilities of the span's later actual tokens (TRL's default "observed" merge);
  tokens whose text is the same in both vocabularies are compared directly (L1), the
  others with ULD's sorted L1.

Both are zero when teacher and student are the same model with the same tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..teachers import TeacherOutput

IGNORE_INDEX = -100


@dataclass
class CrossTokenOutput(TeacherOutput):
    """A teacher's outputs on its own tokenization of the batch's text.

    ``logits``: ``(N, M, V_teacher)`` on the teacher's positions; ``teacher_targets``:
    ``(N, M)`` the teacher's actual next tokens. Per row ``r``: ``pairs[r]`` is
    ``(student positions, teacher positions)`` paired in order (ULD);
    ``groups[r]`` a list of ``(student positions, teacher positions)`` spans that cover the
    same text (GOLD). ``matched``: ``(V_student,)`` the teacher id of the token with the same
    text, or -1.
    """

    teacher_targets: Tensor | None = None
    pairs: list[tuple[list[int], list[int]]] = field(default_factory=list)
    groups: list[list[tuple[list[int], list[int]]]] = field(default_factory=list)
    matched: Tensor | None = None


def sorted_l1(p: Tensor, q: Tensor) -> Tensor:
    """``(P,)``: the L1 distance between ``p (P, V1)`` and ``q (P, V2)`` each sorted in
    decreasing order, the shorter padded with zeros (ULD's distance)."""
    ps = p.sort(-1, descending=True).values
    qs = q.sort(-1, descending=True).values
    width = max(ps.shape[-1], qs.shape[-1])
    ps = F.pad(ps, (0, width - ps.shape[-1]))
    qs = F.pad(qs, (0, width - qs.shape[-1]))
    return (ps - qs).abs().sum(-1)


def _masked_rows(logits: Tensor, labels: Tensor) -> Tensor:
    """``(P, V)``: the positions of ``logits (..., V)`` whose label is not ignored (one
    tokenizer, or a classifier: positions pair one to one)."""
    flat = logits.float().reshape(-1, logits.shape[-1])
    return flat[labels.reshape(-1) != IGNORE_INDEX]


def uld_loss(student_logits: Tensor, teacher: TeacherOutput, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """The mean ULD distance over the paired positions (0 when none)."""
    if isinstance(teacher, CrossTokenOutput):
        q = F.softmax(student_logits.float() / temperature, -1)
        p = F.softmax(teacher.logits.float() / temperature, -1)
        s_rows = [q[r, s] for r, (s, _) in enumerate(teacher.pairs) if s]
        t_rows = [p[r, t] for r, (_, t) in enumerate(teacher.pairs) if t]
        if not s_rows:
            return student_logits.sum() * 0.0
        q, p = torch.cat(s_rows), torch.cat(t_rows)
    else:
        q = F.softmax(_masked_rows(student_logits, labels) / temperature, -1)
        p = F.softmax(_masked_rows(teacher.logits, labels) / temperature, -1)
        if not len(q):
            return student_logits.sum() * 0.0
    return sorted_l1(q, p).mean()


def merge_groups(log_p: Tensor, groups: list[list[int]], targets: list[int]) -> Tensor:
    """``(G, V)`` span distributions (unnormalised): the group's first position's
    distribution times the probabilities of the group's later actual tokens (TRL GOLD's
    "observed" merge). ``targets[pos]`` is the actual next token at ``pos``."""
    rows = []
    for g in groups:
        later = sum((log_p[pos, targets[pos]] for pos in g[1:]), log_p.new_zeros(()))
        rows.append(log_p[g[0]] + later)
    return torch.stack(rows).exp()


def gold_distance(ps: Tensor, pt: Tensor, matched: Tensor, matched_weight: float,
                  unmatched_weight: float) -> Tensor:
    """``(G,)``: L1 on the tokens with the same text in both vocabularies plus sorted L1 on
    the rest (student span distributions ``ps (G, Vs)``, teacher ``pt (G, Vt)``)."""
    has = matched >= 0
    t_ids = matched[has]
    direct = (ps[:, has] - pt[:, t_ids]).abs().sum(-1)
    t_rest = torch.ones(pt.shape[-1], dtype=torch.bool, device=pt.device)
    t_rest[t_ids] = False
    rest = sorted_l1(ps[:, ~has], pt[:, t_rest])
    return matched_weight * direct + unmatched_weight * rest


def gold_loss(student_logits: Tensor, teacher: TeacherOutput, labels: Tensor, temperature: float = 1.0,
              matched_weight: float = 1.0, unmatched_weight: float = 1.0) -> Tensor:
    """The mean GOLD-style distance over the aligned spans (0 when none)."""
    if not isinstance(teacher, CrossTokenOutput):  # one vocabulary: every position its own span, all matched
        q = F.softmax(_masked_rows(student_logits, labels) / temperature, -1)
        p = F.softmax(_masked_rows(teacher.logits, labels) / temperature, -1)
        ids = torch.arange(q.shape[-1], device=q.device)
        return gold_distance(q, p, ids, matched_weight, unmatched_weight).mean() if len(q) else student_logits.sum() * 0
    log_q = F.log_softmax(student_logits.float() / temperature, -1)
    log_p = F.log_softmax(teacher.logits.float() / temperature, -1)
    s_targets, t_targets = labels.tolist(), teacher.teacher_targets.tolist()
    out = []
    for r, row_groups in enumerate(teacher.groups):
        if not row_groups:
            continue
        ps = merge_groups(log_q[r], [s for s, _ in row_groups], s_targets[r])
        pt = merge_groups(log_p[r], [t for _, t in row_groups], t_targets[r])
        out.append(gold_distance(ps, pt, teacher.matched.to(ps.device), matched_weight, unmatched_weight))
    if not out:
        return student_logits.sum() * 0.0
    return torch.cat(out).mean()
