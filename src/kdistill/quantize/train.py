"""Quantization-aware fine-tuning: QAT (cross-entropy) and QAD (distillation from a float
model), on a graph prepared with fake-quantizers.

**QAD** follows NVIDIA TensorRT Model Optimizer's quantization-aware distillation
(``modelopt.torch.distill`` with a quantized student; its docs, "Quantization Aware
Distillation"): start from the calibrated (post-training) ranges, then train the
fake-quantized student against the frozen float teacher's logits for a short schedule at
a low learning rate. The loss is Hinton KD (:func:`kdistill.losses.kd_loss`, ``T^2``
scaled) mixed with hard-label cross-entropy::

    loss = alpha * KD(student_T, teacher_T) + (1 - alpha) * CE(student, y)

``alpha = 0`` is plain QAT (the teacher is not even run). The fake-quantizers pass
gradients straight through (torchao's ``FusedMovingAvgObsFakeQuantize``), so the float
weights under them learn to sit well on the int8 grid.

Schedule: SGD with momentum 0.9, cosine decay from ``lr`` to 0; BatchNorm statistics are
frozen (eval mode) throughout, as usual when fine-tuning a trained network, so the
conv-BN fold conversion performs matches what training saw; activation ranges keep
updating (moving average) during the first half of the steps and are frozen for the
second, so the last steps train against the ranges that ship.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..data import Dataset
from ..losses import hard_label_ce, kd_loss
from .backend import set_mode, torchao_pt2e


def qad_loss(student_logits: Tensor, labels: Tensor, teacher_logits: Tensor | None, alpha: float,
             temperature: float) -> Tensor:
    """``alpha * KD + (1 - alpha) * CE``; with ``alpha == 0`` exactly the CE of plain QAT."""
    ce = hard_label_ce(student_logits, labels)
    if alpha == 0:
        return ce
    if teacher_logits is None:
        raise ValueError("a distillation weight alpha > 0 needs teacher logits")
    return alpha * kd_loss(student_logits, teacher_logits, temperature) + (1 - alpha) * ce


def _observers(prepared: nn.Module, enabled: bool) -> None:
    ao_fq = __import__("torchao.quantization.pt2e", fromlist=["enable_observer", "disable_observer"])
    prepared.apply(ao_fq.enable_observer if enabled else ao_fq.disable_observer)


@torch.no_grad()
def calibrate(prepared: nn.Module, batches: list[Tensor]) -> None:
    """Run ``batches`` through a prepared graph in eval mode so its observers (PTQ) or
    fake-quantizers' observers (QAT) record activation ranges."""
    set_mode(prepared, False)
    for x in batches:
        prepared(x)


def finetune(prepared: nn.Module, train: Dataset, teacher: Callable[[Tensor], Tensor] | None, *,
             epochs: int, lr: float, batch_size: int, alpha: float, temperature: float, seed: int,
             log: Callable[[str], None] = print) -> list[dict[str, float]]:
    """Fake-quantized training of ``prepared`` in place; returns per-epoch mean loss.

    ``teacher`` maps inputs to logits (a frozen float model); ``None`` with ``alpha == 0``.
    """
    torchao_pt2e()
    if alpha > 0 and teacher is None:
        raise ValueError("QAD (alpha > 0) needs a teacher")
    params = [p for p in prepared.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    loader = train.loader(batch_size, shuffle=True, seed=seed, device="cpu", drop_last=True)
    steps = max(1, epochs * len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    freeze_at = steps // 2
    history, step = [], 0
    set_mode(prepared, False)  # BatchNorm frozen; fake-quant and gradients unaffected
    _observers(prepared, True)
    for epoch in range(epochs):
        total, n = 0.0, 0
        for batch in loader.iterate(epoch):
            if step == freeze_at:
                _observers(prepared, False)
            x, y = batch["x"], batch["y"]
            t_logits = None
            if alpha > 0:
                with torch.no_grad():
                    t_logits = teacher(x)
            loss = qad_loss(prepared(x), y, t_logits, alpha, temperature)
            if not torch.isfinite(loss):
                from ..errors import NonFiniteError

                raise NonFiniteError(f"Quantization-aware training produced a non-finite loss at step {step}; "
                                     "lower --lr.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * x.shape[0]
            n += x.shape[0]
            step += 1
        history.append({"epoch": epoch + 1, "loss": total / max(n, 1)})
        log(f"  epoch {epoch + 1}/{epochs}: loss {total / max(n, 1):.4f}")
    _observers(prepared, False)
    return history
