"""Helpers shared by the logit methods: logit standardization and the teacher's full logits.

Logit standardization (Sun et al. 2024, "Logit Standardization in Knowledge
Distillation", CVPR, arXiv:2403.01427) replaces ``softmax(z / T)`` by
``softmax(Z(z) / T)`` with ``Z(z) = (z - mean(z)) / std(z)`` per sample, for teacher and
student alike: the student then only has to match the teacher's logit *relations*, not
their range, and the loss is invariant to adding a constant to, or scaling, either side's
logits. The paper's base temperature after standardization is 2 (``LS_TEMPERATURE``);
without it the methods keep their own default temperature.
"""

from __future__ import annotations

import math

from torch import Tensor

from ..errors import ConfigError
from ..teachers import TeacherOutput

#: the base temperature of Sun et al. 2024 for standardized logits (CIFAR-100 and ImageNet)
LS_TEMPERATURE = 2.0
_EPS = 1e-7


def standardize(logits: Tensor) -> Tensor:
    """``(z - mean(z)) / (std(z) + 1e-7)`` over the last dimension (sample std, as the paper's
    code: ``torch.std`` with Bessel's correction), in float32."""
    z = logits.float()
    return (z - z.mean(-1, keepdim=True)) / (z.std(-1, keepdim=True) + _EPS)


def resolve_temperature(name: str, temperature: float | None, standardize_logits: bool, plain: float) -> float:
    """The temperature a logit method uses: the one set, else the paper's default for the mode
    (``plain`` without standardization, :data:`LS_TEMPERATURE` with it)."""
    t = (LS_TEMPERATURE if standardize_logits else plain) if temperature is None else float(temperature)
    if not (t > 0 and math.isfinite(t)):
        raise ConfigError(f"{name}: temperature must be a positive number, got {temperature}.")
    return t


def full_teacher_logits(name: str, teacher: TeacherOutput) -> Tensor:
    """The teacher's logits over every class, refusing outputs where they are not known
    (a top-k cache, a mean-of-probabilities ensemble), which standardization cannot use."""
    if getattr(teacher, "topk_values", None) is not None:
        raise ConfigError(f"{name}: standardize needs the teacher's full logits; this teacher cache keeps only "
                          "the top-k. Cache the teacher in full (no topk) or turn standardize off.")
    if teacher.member_logits is not None and teacher.combine == "mean_prob":
        raise ConfigError(f"{name}: standardize needs logits, but this ensemble averages probabilities; "
                          "use combine: mean_logit or turn standardize off.")
    return teacher.logits
