"""CRD: contrastive representation distillation.

Tian, Krishnan & Isola (2020), "Contrastive Representation Distillation", ICLR,
arXiv:1910.10699. The pre-logit embeddings of student and teacher go through trainable
heads (linear to ``embed_dim`` + L2 normalisation). Two memory banks hold one running
embedding per training sample (``num_data x embed_dim``), one for each network. For a
sample ``i`` the positive pair is (student ``i``, teacher ``i``); ``K`` negatives are
drawn uniformly from the other network's bank. With ``h = exp(v . m / tau) / Z`` (``Z``
fixed from the first batch, as the paper's NCE approximation does) the NCE objective
of the paper is

    L = -1/b sum_i [ log(h_pos / (h_pos + K/N)) + sum_neg log((K/N) / (h_neg + K/N)) ],

applied in both directions (student embedding against the teacher bank and vice versa).
After each training step the banks move to the batch's embeddings with momentum and are
re-normalised. Positives are keyed by ``batch["index"]``, the sample's position in the
training set.

On several processes (DDP, FSDP) every process updates its banks with the embeddings and
indices of all processes' batches (gathered each step), so the banks stay the same on all
of them, as if one process had seen the global batch; ``Z`` is the mean over processes.

The banks need the training set's size: set ``num_data`` (``kdistill train`` fills it in
from the data; in your own loop pass ``num_data=len(train_set)`` to ``create``).

Each step gathers ``b * (K + 1) * embed_dim`` bank entries per direction (about 1 GB at
b = 128, K = 16384 in fp32); lower ``num_negatives`` on small machines.

Defaults from the paper and RepDistiller's CIFAR-100 recipe: weight 0.8, CE weight 1.0,
``embed_dim`` 128, ``K`` 16384 negatives (clipped to ``num_data - 1``), ``tau`` 0.07,
momentum 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..distributed import gather_rows, mean_over_processes
from ..errors import ConfigError, DataError
from ._base import Context, Method
from ._registry import register_method
from .cc import embed_heads, one_embedding


def nce_loss(scores: Tensor, num_data: int, eps: float = 1e-7) -> Tensor:
    """NCE loss of ``(b, 1 + K)`` normalised scores whose column 0 is the positive.

    The noise distribution is uniform over the ``num_data`` samples, so each of the ``K``
    noise draws has probability ``1 / num_data``.
    """
    b, k = scores.shape[0], scores.shape[1] - 1
    noise = k / num_data
    log_pos = torch.log(scores[:, 0] / (scores[:, 0] + noise + eps))
    log_neg = torch.log(noise / (scores[:, 1:] + noise + eps))
    return -(log_pos.sum() + log_neg.sum()) / b


@register_method("crd")
class CRD(Method):
    """Contrastive representation distillation (Tian et al. 2020); see the module docstring."""

    default_weight = 0.8
    default_ce_weight = 1.0
    #: its memory banks are keyed by each batch's ``index`` (the samples' positions)
    needs_index = True

    @dataclass
    class Config:
        student_layers: list[str] | None = None
        teacher_layers: list[str] | None = None
        #: training-set size (rows of each memory bank); kdistill train sets it
        num_data: int | None = None
        embed_dim: int = 128
        num_negatives: int = 16384
        temperature: float = 0.07
        momentum: float = 0.5

    def __init__(self, cfg, student, teacher, example):
        super().__init__(cfg, student, teacher, example)
        if cfg.num_data is None:
            raise ConfigError(
                "crd needs num_data, the number of training samples (its memory banks hold one row "
                "per sample); pass num_data=len(train_set) to create(), or set method.num_data."
            )
        if cfg.num_data < 2:
            raise ConfigError(f"crd: num_data must be at least 2, got {cfg.num_data}.")
        if cfg.temperature <= 0 or not 0 <= cfg.momentum < 1 or cfg.num_negatives < 1:
            raise ConfigError(
                f"crd: need temperature > 0, 0 <= momentum < 1 and num_negatives >= 1; got "
                f"temperature={cfg.temperature}, momentum={cfg.momentum}, num_negatives={cfg.num_negatives}."
            )
        self.student_taps, self.teacher_taps = one_embedding("crd", cfg, student, teacher)
        self.embed_s, self.embed_t = embed_heads(
            "crd", student, teacher, self.student_taps[0], self.teacher_taps[0], example, cfg.embed_dim
        )
        self.num_data = int(cfg.num_data)
        self.num_negatives = min(cfg.num_negatives, self.num_data - 1)
        # the paper's initialisation: uniform with the variance of a unit vector's entries
        std = 1.0 / math.sqrt(cfg.embed_dim / 3)
        self.register_buffer("memory_s", torch.rand(self.num_data, cfg.embed_dim) * 2 * std - std)
        self.register_buffer("memory_t", torch.rand(self.num_data, cfg.embed_dim) * 2 * std - std)
        # normalising constants Z, fixed from the first batch (negative = not yet set)
        self.register_buffer("z", torch.full((2,), -1.0))

    def _scores(self, v: Tensor, memory: Tensor, idx: Tensor, slot: int) -> Tensor:
        # fp32 even under autocast: exp(1 / 0.07) ~ 1.6e6 overflows fp16
        with torch.autocast(v.device.type, enabled=False):
            dots = torch.bmm(memory[idx], v.float().unsqueeze(-1)).squeeze(-1)
        scores = torch.exp(dots / self.cfg.temperature)
        if self.z[slot] < 0:
            first = scores.detach().mean()
            self.z[slot] = (mean_over_processes(first) if self.training else first) * self.num_data
        # a copy: the buffer is written again for the other direction before backward
        return scores / self.z[slot].clone()

    @torch.no_grad()
    def _update(self, memory: Tensor, v: Tensor, index: Tensor) -> None:
        m = self.cfg.momentum
        moved = memory[index] * m + v.detach() * (1 - m)
        memory.index_copy_(0, index, moved / moved.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def forward(self, ctx: Context) -> Tensor:
        index = ctx.batch.get("index")
        if index is None:
            raise DataError("crd needs batch['index'] (each sample's position in the training set).")
        index = index.to(self.memory_s.device).long()
        if int(index.max()) >= self.num_data or int(index.min()) < 0:
            raise DataError(
                f"crd: batch index {int(index.max())} is outside the memory banks' {self.num_data} rows; "
                "num_data must be the size of the training set."
            )
        v_s = self.embed_s(ctx.student_features[self.student_taps[0]])
        v_t = self.embed_t(ctx.teacher.features[self.teacher_taps[0]].detach())
        neg = torch.randint(0, self.num_data, (index.shape[0], self.num_negatives), device=index.device)
        idx = torch.cat([index.unsqueeze(1), neg], dim=1)
        # each embedding is contrasted with the *other* network's bank
        loss = nce_loss(self._scores(v_s, self.memory_t, idx, 0), self.num_data) + nce_loss(
            self._scores(v_t, self.memory_s, idx, 1), self.num_data
        )
        if self.training:
            v_s, v_t, index = gather_rows(v_s, v_t, index)  # every process's batch
            self._update(self.memory_s, v_s, index)
            self._update(self.memory_t, v_t, index)
        return loss
