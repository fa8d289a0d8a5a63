"""On-policy distillation (GKD, Agarwal et al. 2024): with probability ``lmbda`` a
training batch is replaced by the student's own completions of the batch's prompts, which
the teacher then scores; the other batches are the dataset's text (TRL's GKDTrainer
mixes the same way, per batch).

The draws come from a generator seeded by ``(seed, draw number)``; the draw number is a
buffer of the distiller, so it is saved in checkpoints and a resumed run draws the same
batches and samples as one that never stopped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..methods import Method
from .chunked import LMDistiller
from .generate import complete_rows


class OnPolicyDistiller(LMDistiller):
    """A :class:`~kdistill.methods.Distiller` whose training batches are, with probability
    ``lmbda``, the student's samples (``batch["on_policy"]`` is then ``True``).

    Args:
        prompt_len: every training row's prompt length (looked up by ``batch["index"]``).
        new_tokens: tokens generated per row (``None``: fill the row).
        temperature: sampling temperature (0: greedy).
        loss_chunk: positions per chunk of the token losses (see :class:`LMDistiller`).
    """

    def __init__(self, student: nn.Module, teacher, terms: Sequence[tuple[float, Method]], prompt_len: Tensor,
                 lmbda: float, new_tokens: int | None, temperature: float, seed: int, eos_id: int | None,
                 loss_chunk: int | str | None = "auto"):
        super().__init__(student, teacher, terms, loss_chunk)
        self.prompt_len = prompt_len.cpu()
        self.lmbda, self.new_tokens, self.temperature = float(lmbda), new_tokens, float(temperature)
        self.seed, self.eos_id = int(seed), eos_id
        self.register_buffer("draws", torch.zeros((), dtype=torch.int64))

    def on_policy_batch(self, batch: dict) -> dict:
        """``batch`` itself, or (with probability lmbda) the student's completions of its prompts."""
        x = batch["x"]
        g = torch.Generator(device=x.device).manual_seed(self.seed * 1_000_003 + int(self.draws))
        self.draws += 1
        if float(torch.rand((), generator=g, device=x.device)) >= self.lmbda:
            return batch
        plen = self.prompt_len[batch["index"].cpu()].to(x.device)
        new_x, new_y = complete_rows(self.student, x, plen, self.new_tokens, self.temperature, g, eos_id=self.eos_id)
        return {**batch, "x": new_x, "y": new_y, "on_policy": True}

    def prepare_batch(self, batch: dict) -> dict:
        return self.on_policy_batch(batch) if self.training else batch
