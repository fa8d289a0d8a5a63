"""DOT: the distillation-oriented trainer, an optimizer with one momentum per loss kind.

Zhao, Song & Wang (2023), "DOT: A Distillation-Oriented Trainer", ICCV,
arXiv:2307.08436. With one optimizer on ``L_task + L_kd`` the task (CE) loss dominates
and the distillation loss stays high: a trade-off the paper breaks by giving the two
gradients separate SGD momentum buffers, a larger momentum for distillation and a
smaller one for the task:

    v_kd   <- (mu + delta) * v_kd   + g_kd
    v_task <- (mu - delta) * v_task + g_task + weight_decay * theta
    theta  <- theta - lr * (v_task + v_kd)

With ``delta = 0`` the sum of the buffers evolves as one heavy-ball buffer on
``g_task + g_kd``: plain SGD with momentum ``mu`` (no Nesterov, as the paper).

How it fits kdistill's term contract: every loss term has a ``role`` (``"task"`` for the
hard-label ``ce`` term, ``"kd"`` for every distillation term). ``train.optimizer: dot``
makes this optimizer and :meth:`attach` hands it to the distiller as its
``grad_split``: during the training forward the distiller takes the gradient of its
``kd`` terms itself (``torch.autograd.grad``, the extra backward DOT needs anyway) and
passes it here, and returns a loss of the same value whose backward carries only the
task gradient. The Trainer's one ``backward`` and gradient clipping therefore act on the
task gradient (clipping does not touch the KD gradient), and :meth:`step` reads the KD
gradient from what was passed (summed over the micro-batches of a gradient accumulation,
each divided by ``grad_accum`` like the task's).

A distiller without distillation terms (a teacher trained first, ``method: ce``) passes
no KD gradient, and DOT then steps as plain SGD with momentum ``mu``.

Limits: one process (the KD gradient is not all-reduced by DDP/FSDP), and not fp16
(the KD gradient is taken without the loss scaler); both are refused.

Defaults: the paper's CIFAR-100 setting, momentum 0.9 (``train.momentum``), delta 0.075
(``train.dot_delta``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError


class DistillationOrientedTrainer(torch.optim.Optimizer):
    """SGD with separate momentum buffers for the task and the distillation gradient.

    Args:
        params: the parameters (or groups).
        lr, momentum, weight_decay: as SGD's (weight decay joins the task gradient).
        delta: the momentum gap: ``momentum + delta`` for KD, ``momentum - delta`` for the task.
        grad_accum: micro-batches per step; each passed KD gradient is divided by it.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, delta: float = 0.075,
                 grad_accum: int = 1):
        if not (0 <= momentum - delta and momentum + delta < 1 and delta >= 0):
            raise ConfigError(f"train.optimizer dot: need 0 <= momentum - dot_delta and momentum + dot_delta < 1; "
                              f"got momentum {momentum}, dot_delta {delta}.")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "delta": delta})
        self.grad_accum = grad_accum
        self._kd: dict[nn.Parameter, Tensor] = {}
        self._seen_kd = False  # a distiller without KD terms (a teacher, `ce` alone) trains as plain SGD

    def attach(self, distiller: nn.Module) -> None:
        """Route the distiller's KD gradient here (see the module docstring)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            raise ConfigError("train.optimizer dot runs in one process only: its distillation gradient is not "
                              "all-reduced across processes. Use sgd with several processes.")
        distiller.grad_split = self.add_kd_grads

    def add_kd_grads(self, params: Sequence[nn.Parameter], grads: Sequence[Tensor | None]) -> None:
        """Add one micro-batch's KD gradient (``None`` where a parameter got none)."""
        for p, g in zip(params, grads, strict=True):
            if g is None:
                continue
            self._seen_kd = True
            g = g.detach() / self.grad_accum
            self._kd[p] = self._kd[p] + g if p in self._kd else g

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            mu, wd, lr = group["momentum"], group["weight_decay"], group["lr"]
            delta = group["delta"] if self._seen_kd else 0.0
            for p in group["params"]:
                g_kd = self._kd.get(p)
                if p.grad is None and g_kd is None:
                    continue
                state = self.state[p]
                g_task = torch.zeros_like(p) if p.grad is None else p.grad
                if wd:
                    g_task = g_task.add(p, alpha=wd)
                for key, m, g in (("task_buffer", mu - delta, g_task), ("kd_buffer", mu + delta, g_kd)):
                    buf = state.get(key)
                    if g is None:
                        if buf is not None:
                            buf.mul_(m)
                        continue
                    state[key] = g.clone() if buf is None else buf.mul_(m).add_(g)
                update = state["task_buffer"] if "kd_buffer" not in state else state["task_buffer"] + state["kd_buffer"]
                p.add_(update, alpha=-lr)
        self._kd.clear()
        return loss


def make_dot(params, cfg, sharded: bool = False) -> DistillationOrientedTrainer:
    """DOT from the train section (``train.optimizer: dot``): ``lr``, ``momentum``,
    ``weight_decay``, ``dot_delta``, ``grad_accum``; refuses FSDP and fp16."""
    if sharded or getattr(cfg, "fsdp", False):
        raise ConfigError("train.optimizer dot does not run with train.fsdp (one process only).")
    if cfg.precision == "fp16":
        raise ConfigError("train.optimizer dot does not run with train.precision fp16 (its distillation gradient "
                          "would skip the loss scaler); use bf16 or fp32.")
    return DistillationOrientedTrainer(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                       delta=cfg.dot_delta, grad_accum=cfg.grad_accum)
