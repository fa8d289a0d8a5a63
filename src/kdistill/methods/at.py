"""Attention transfer (AT): match where the teacher's feature maps are active.

Zagoruyko & Komodakis (2017), "Paying More Attention to Attention: Improving the Performance
of Convolutional Neural Networks via Attention Transfer", arXiv:1612.03928.

* ``mode: activation`` (section 3.1): the attention map of an activation ``A`` (N, C, *S) is
  ``Q = mean_c |A_c|^p`` with ``p = 2`` (the paper's best choice), flattened and divided by
  its L2 norm; the loss is the squared distance of the student's and teacher's normalised
  maps, summed over several stage pairs. Maps of different spatial size are average-pooled
  to the smaller one. The squared difference is averaged over batch and positions, as in
  the CRD benchmark (Tian et al. 2020, RepDistiller), whose weight 1000 is the default.
* ``mode: gradient`` (section 3.2): attention is the gradient of the loss with respect to
  the input, ``J = dL/dx``; the loss is the same squared distance between the L2-normalised
  ``J_s`` and ``J_t``. ``L`` is the cross-entropy with the batch's labels (the teacher's
  prediction for unlabelled transfer samples, label -1). The teacher is run once more with
  gradients on its input only (its parameters stay frozen and get no gradient); the
  student's gradient is built with ``create_graph`` so the loss trains the student (double
  backpropagation). This costs one extra forward and backward of each network per step, and
  the student's BatchNorm sees each batch twice. The same mean-of-squares form keeps the
  value on the activation variant's scale, so the default weight applies to both.

Layers: ``student_layers`` / ``teacher_layers``, default the last k declared stages of each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ._base import Context, Method
from ._pairs import match_spatial, probe_shapes, require_example, require_maps, stage_pairs
from ._registry import register_method


def attention_map(feat: Tensor, p: float = 2.0) -> Tensor:
    """``normalize(mean_c |A|^p)`` flattened: (N, C, *S) -> (N, prod(S)), unit L2 norm per sample."""
    return F.normalize(feat.float().abs().pow(p).mean(1).flatten(1), dim=1)


def at_loss(student_feat: Tensor, teacher_feat: Tensor, p: float = 2.0) -> Tensor:
    """Mean squared difference of the two attention maps (the larger map pooled to the smaller)."""
    s, t = match_spatial(student_feat, teacher_feat.detach())
    return (attention_map(s, p) - attention_map(t, p)).pow(2).mean()


def gradient_attention_loss(student_grad: Tensor, teacher_grad: Tensor) -> Tensor:
    """Mean squared difference of the per-sample L2-normalised input gradients."""
    s = F.normalize(student_grad.float().flatten(1), dim=1)
    t = F.normalize(teacher_grad.detach().float().flatten(1), dim=1)
    return (s - t).pow(2).mean()


def input_gradient(model, x: Tensor, targets: Tensor, create_graph: bool) -> Tensor:
    """``dL/dx`` of the summed cross-entropy; only ``x`` is differentiated (parameters untouched)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        loss = F.cross_entropy(logits.float(), targets, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x, create_graph=create_graph)
    return grad


@register_method("at")
class AT(Method):
    """Attention transfer between stage pairs (activation maps) or input gradients."""

    default_weight = 1000.0

    @dataclass
    class Config:
        """Attributes:
            student_layers / teacher_layers: paired tap specs (default: last k declared stages).
            p: exponent of the attention map (2, the paper's choice).
            mode: "activation" (feature maps) or "gradient" (input gradients).
        """

        student_layers: list[str] | None = None
        teacher_layers: list[str] | None = None
        p: float = 2.0
        mode: str = "activation"

    def __init__(self, cfg, student, teacher, example):
        super().__init__(cfg, student, teacher, example)
        if cfg.mode not in ("activation", "gradient"):
            raise ConfigError(f"at: mode must be 'activation' or 'gradient', got {cfg.mode!r}.")
        if cfg.p <= 0:
            raise ConfigError(f"at: p must be positive, got {cfg.p}.")
        if cfg.mode == "gradient":
            net = getattr(teacher, "module", None)
            if net is None:
                raise ConfigError(
                    "at with mode: gradient needs a single teacher network (it differentiates the "
                    "teacher's loss with respect to the input); ensembles and cached teachers "
                    "cannot give input gradients. Use mode: activation."
                )
            # plain lists keep both networks out of this term's parameters and state_dict
            self._nets = [student, net]
            return
        s_specs, t_specs = stage_pairs("at", cfg.student_layers, cfg.teacher_layers, student, teacher)
        s_shapes, t_shapes = probe_shapes(student, teacher, s_specs, t_specs, require_example("at", example))
        for s, t in zip(s_specs, t_specs, strict=True):
            require_maps("at", s, s_shapes[s], t, t_shapes[t])
        self.student_taps, self.teacher_taps = s_specs, t_specs

    def forward(self, ctx: Context) -> Tensor:
        if self.cfg.mode == "gradient":
            return self._gradient_loss(ctx)
        p = self.cfg.p
        return sum(
            at_loss(ctx.student_features[s], ctx.teacher.features[t], p)
            for s, t in zip(self.student_taps, self.teacher_taps, strict=True)
        )

    def _gradient_loss(self, ctx: Context) -> Tensor:
        student, teacher = self._nets
        x, y = ctx.batch["x"], ctx.labels
        if not torch.is_floating_point(x):
            raise ConfigError(
                "at with mode: gradient needs real-valued inputs (it differentiates with respect to them)."
            )
        # unlabelled transfer samples take the teacher's prediction as their target
        targets = torch.where(y >= 0, y, ctx.teacher_logits.argmax(-1))
        g_t = input_gradient(teacher, x, targets, create_graph=False)
        g_s = input_gradient(student, x, targets, create_graph=True)
        return gradient_attention_loss(g_s, g_t)
