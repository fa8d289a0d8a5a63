"""First phases that some methods need before the main training (FitNets' hint training,
FT's paraphraser, AB's and FSP's initialisation), run by the trainer inside the same
``kdistill train``.

Vocabulary (one meaning per word): a *phase* is a method's extra training before the main
one (:class:`~kdistill.methods.FirstPhase`); a *stage* is a network's depth stage (the
feature taps); a scheme's separate trainings are its *steps*."""

from __future__ import annotations

from typing import Any

from .optim import make_optimizer


def run_first_phases(trainer: Any) -> list[dict]:
    """Run every term's :meth:`~kdistill.methods.Method.first_phase`; returns one log row each.

    ``trainer`` is the :class:`~kdistill.engine.trainer.Trainer` that calls this (its
    ``distiller``, ``cfg``, ``device``, ``accelerator``, ``log`` and ``phase_loader``); it is
    not imported here, so the trainer imports this module and not the other way round."""
    distiller = trainer.distiller  # before any DDP/FSDP wrapper: see Trainer.fit
    rows = []
    for term in distiller.terms:
        phase = term.first_phase()
        if phase is None or phase.epochs <= 0:
            continue
        # a first phase never runs longer than the main training: the papers' 30 first-phase
        # epochs belong to 200+ epoch runs, and a 1-epoch quick look must stay quick
        epochs = min(phase.epochs, max(1, trainer.cfg.epochs))
        if epochs < phase.epochs:
            trainer.log(f"{phase.name}: {epochs} epoch(s) instead of {phase.epochs} (capped at train.epochs)")
        params = [p for p in phase.params if p.requires_grad]
        # the run's own optimizer, momentum and weight decay at the phase's learning rate, as
        # RepDistiller's init stage does (its SGD at the main learning rate); an Adam here
        # at an SGD-sized learning rate (0.05-0.2) wrecked the layers it initialised
        # (DOT splits a distiller's task and KD gradients; a first phase has one loss: SGD)
        kind = "sgd" if trainer.cfg.optimizer == "dot" else trainer.cfg.optimizer
        opt = make_optimizer(params, trainer.cfg.model_copy(update={"lr": phase.lr or trainer.cfg.lr, "optimizer": kind}),
                             trainer.device)
        distiller.train()
        for epoch in range(epochs):
            total, n = 0.0, 0
            for batch in trainer.phase_loader().iterate(epoch):
                with trainer.accelerator.autocast():
                    loss = phase.loss(distiller.context(batch))
                trainer.accelerator.backward(loss)
                opt.step()
                # no phase gradient may reach the main training's first step
                opt.zero_grad(set_to_none=True)
                total += float(loss.detach()) * batch["y"].shape[0]
                n += batch["y"].shape[0]
            row = {"phase": phase.name, "phase_epoch": epoch, "phase_loss": total / max(1, n)}
            rows.append(row)
            trainer.log(f"{phase.name} epoch {epoch + 1}/{epochs}  loss {row['phase_loss']:.4f}")
    return rows
