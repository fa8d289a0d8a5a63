"""DeiT: distillation through a distillation token, for vision-transformer students.

Touvron, Cord, Douze, Massa, Sablayrolles & Jégou (2021), "Training data-efficient image
transformers & distillation through attention", ICML 2021, arXiv:2012.12877.

The student has two heads: the class token's (``cls_head``) learns from the labels, the
distillation token's (``dist_head``) from the teacher; at inference the model gives the
average of both (timm's ``deit_*_distilled_*`` models do so in ``forward``, in evaluation
and in ordinary training mode alike, so what is trained, evaluated and exported is that
average). The term reads each head's output through a feature tap, so any student with two
such heads works: timm's distilled DeiT (``head``, ``head_dist``), or a plain timm ViT given
a token with :func:`kdistill.models.add_distillation_token`.

* **hard** (the paper's best, §5.2): ``(1 - a) * CE(Z_cls, y) + a * CE(Z_dist, y_t)``,
  ``y_t = argmax Z_t``, with ``a = 1/2``.
* **soft**: ``(1 - a) * CE(Z_cls, y) + a * T^2 * KL(softmax(Z_t / T) || softmax(Z_dist / T))``
  with the paper's ``a = 0.1`` and ``T = 3``.

Used alone the term carries its own label loss on the class head (no extra ``ce`` term is
added: ``default_ce_weight = 0``). Loss keys: ``loss_deit_cls`` and ``loss_deit_dist``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, ShapeError
from ..losses import hard_label_ce, kl_to_targets, soft_target_ce
from ..taps import resolve
from ._base import Context, Method
from ._registry import register_method


@register_method("deit")
class DeiT(Method):
    default_weight = 1.0
    default_ce_weight = 0.0
    #: what the student must have beyond logits (the generic contract tests, built on
    #: one-head students, and the CNN methods table leave such methods out)
    student_contract: ClassVar[str] = "a class-token head and a distillation-token head"

    @dataclass
    class Config:
        #: "hard" (CE with the teacher's argmax) or "soft" (KL at ``temperature``)
        distillation: str = "hard"
        #: the distillation head's share ``a``; default 0.5 (hard) or 0.1 (soft), the paper's
        alpha: float | None = None
        #: soft distillation's temperature (the paper's tau = 3)
        temperature: float = 3.0
        #: label smoothing of the class head's cross-entropy (DeiT trains with 0.1)
        label_smoothing: float = 0.0
        #: module paths of the class-token and distillation-token heads (timm's names)
        cls_head: str = "head"
        dist_head: str = "head_dist"

    def __init__(self, cfg, student, teacher, example):
        super().__init__(cfg, student, teacher, example)
        if cfg.distillation not in ("hard", "soft"):
            raise ConfigError(f"deit: distillation must be 'hard' or 'soft', got {cfg.distillation!r}.")
        if cfg.alpha is None:
            cfg.alpha = 0.5 if cfg.distillation == "hard" else 0.1
        if not 0.0 <= cfg.alpha <= 1.0:
            raise ConfigError(f"deit: alpha must lie in [0, 1], got {cfg.alpha}.")
        if cfg.temperature <= 0:
            raise ConfigError(f"deit: temperature must be positive, got {cfg.temperature}.")
        for path in (cfg.cls_head, cfg.dist_head):
            try:
                resolve(student, path)
            except ShapeError as e:
                raise ConfigError(
                    f"deit needs a student with a class-token head and a distillation-token head "
                    f"(timm's deit_*_distilled_* models, or kdistill.models.add_distillation_token); {e}"
                ) from None
        self.student_taps = [cfg.cls_head, cfg.dist_head]

    def forward(self, ctx: Context) -> dict[str, Tensor]:
        cls_logits = ctx.student_features[self.cfg.cls_head]
        dist_logits = ctx.student_features[self.cfg.dist_head]
        soft = ctx.batch.get("y_soft")  # Mixup/CutMix labels, as DeiT trains with
        label = (soft_target_ce(cls_logits, soft) if soft is not None
                 else hard_label_ce(cls_logits, ctx.labels, self.cfg.label_smoothing))
        t = ctx.teacher_logits.detach()
        if self.cfg.distillation == "hard":
            dist = F.cross_entropy(dist_logits.float(), t.argmax(dim=-1))
        else:
            tau = self.cfg.temperature
            dist = kl_to_targets(dist_logits, F.log_softmax(t.float() / tau, dim=-1), tau)
        a = self.cfg.alpha
        return {"cls": (1.0 - a) * label, "dist": a * dist}
