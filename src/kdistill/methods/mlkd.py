"""MLKD: multi-level logit distillation.

Jin, Wang & Lin (2023), "Multi-Level Logit Distillation", CVPR. The student's
predictions are aligned with the teacher's at three levels, each at several temperatures
(the paper's *prediction augmentation*, ``p = softmax(z / T)`` for every ``T`` in
``temperatures``), summed over the temperatures:

* **instance**: ``KL(p_t || p_s) * T^2`` per sample (classical KD at each temperature);
* **batch**: the ``B x B`` Gram matrices ``P P^T`` of the batch's predictions, squared
  difference summed and divided by ``B`` (which samples the networks think alike);
* **class**: the ``C x C`` matrices ``P^T P``, squared difference summed and divided by
  ``C`` (which classes are predicted together).

Confidence masking, as in the official code: a sample is kept when the teacher's top
probability (at T = 1) is at most the batch's ``confidence_percentile``-th percentile, a
class when its summed teacher probability is. The instance level averages the kept
samples' losses over the whole batch (masked ones count 0); the batch and class levels,
which the official code computes as one number, are multiplied by the kept fraction of
samples and of classes. ``confidence_percentile: 100`` keeps everything, and then
``temperatures: [T]`` with the batch and class weights 0 is exactly KD at ``T``.

The paper's training recipe feeds weakly *and* strongly augmented views and distils on
both; here the term sees the one view the data pipeline gives (``data.recipe`` chooses
its augmentation), so that half of the recipe is not reproduced.

``standardize: true`` z-scores both sides' logits first (logit standardization, Sun et
al. 2024, CVPR, arXiv:2403.01427: MLKD + LS).

Defaults: temperatures 2, 3, 4, 5, 6 and the median (percentile 50) as in the official
code; every level weight, the term weight and the CE weight 1 (the three levels summed
unweighted, as the paper's total loss).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ._base import Context, Method
from ._logits import full_teacher_logits, standardize
from ._registry import register_method


def confidence_masks(teacher_logits: Tensor, percentile: float) -> tuple[Tensor, Tensor]:
    """``(sample_mask (B,), class_mask (C,))``: True where the teacher's top probability, or a
    class's summed probability over the batch, is at most the ``percentile``-th percentile."""
    p = F.softmax(teacher_logits.detach().float(), -1)
    conf = p.max(-1).values
    per_class = p.sum(0)
    q = percentile / 100.0
    return conf <= torch.quantile(conf, q), per_class <= torch.quantile(per_class, q)


def mlkd_levels(z_s: Tensor, z_t: Tensor, temperature: float, sample_mask: Tensor, class_mask: Tensor
                ) -> dict[str, Tensor]:
    """The three levels at one temperature (see the module docstring)."""
    t = temperature
    log_p_s = F.log_softmax(z_s.float() / t, -1)
    log_p_t = F.log_softmax(z_t.detach().float() / t, -1)
    p_s, p_t = log_p_s.exp(), log_p_t.exp()
    instance = (p_t * (log_p_t - log_p_s)).sum(-1) * t * t
    batch = ((p_t @ p_t.t() - p_s @ p_s.t()) ** 2).sum() / p_s.shape[0]
    klass = ((p_t.t() @ p_t - p_s.t() @ p_s) ** 2).sum() / p_s.shape[1]
    m_b, m_c = sample_mask.float(), class_mask.float()
    return {"instance": (instance * m_b).mean(), "batch": batch * m_b.mean(), "class": klass * m_c.mean()}


@register_method("mlkd")
class MLKD(Method):
    """Multi-level logit distillation (Jin et al. 2023); see the module docstring."""

    default_weight = 1.0
    default_ce_weight = 1.0

    @dataclass
    class Config:
        temperatures: list[float] = field(default_factory=lambda: [2.0, 3.0, 4.0, 5.0, 6.0])
        confidence_percentile: float = 50.0
        instance_weight: float = 1.0
        batch_weight: float = 1.0
        class_weight: float = 1.0
        standardize: bool = False

    def __init__(self, cfg, student, teacher, example):
        super().__init__(cfg, student, teacher, example)
        if not cfg.temperatures or any(not t > 0 for t in cfg.temperatures):
            raise ConfigError(f"mlkd: temperatures must be a non-empty list of positive numbers, got {cfg.temperatures}.")
        if not 0 < cfg.confidence_percentile <= 100:
            raise ConfigError(f"mlkd: confidence_percentile must lie in (0, 100], got {cfg.confidence_percentile}.")

    def forward(self, ctx: Context) -> dict[str, Tensor]:
        z_s, z_t = ctx.student_logits, ctx.teacher_logits
        if self.cfg.standardize:
            z_s, z_t = standardize(z_s), standardize(full_teacher_logits("mlkd", ctx.teacher))
        m_b, m_c = confidence_masks(ctx.teacher_logits, self.cfg.confidence_percentile)
        weights = {"instance": self.cfg.instance_weight, "batch": self.cfg.batch_weight, "class": self.cfg.class_weight}
        total = {k: z_s.new_zeros((), dtype=torch.float32) for k in weights}
        for t in self.cfg.temperatures:
            for k, v in mlkd_levels(z_s, z_t, float(t), m_b, m_c).items():
                total[k] = total[k] + v
        return {k: weights[k] * v for k, v in total.items() if weights[k] != 0}
