"""First stages that some methods need before the main training (FitNets stage 1, FT's
paraphraser, AB's initialisation), run by the trainer inside the same ``kdistill train``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .trainer import make_optimizer

if TYPE_CHECKING:
    from .trainer import Trainer


def run_pre_stages(trainer: Trainer) -> list[dict]:
    """Run every term's :meth:`~kdistill.methods.Method.pre_stage`; returns one log row each."""
    distiller = trainer.distiller  # before any DDP/FSDP wrapper: see Trainer.fit
    rows = []
    for term in distiller.terms:
        stage = term.pre_stage()
        if stage is None or stage.epochs <= 0:
            continue
        # a first stage never runs longer than the main training: the papers' 30 stage-1
        # epochs belong to 200+ epoch runs, and a 1-epoch quick look must stay quick
        epochs = min(stage.epochs, max(1, trainer.cfg.epochs))
        if epochs < stage.epochs:
            trainer.log(f"{stage.name}: {epochs} epoch(s) instead of {stage.epochs} (capped at train.epochs)")
        params = [p for p in stage.params if p.requires_grad]
        # the run's own optimizer, momentum and weight decay at the stage's learning rate, as
        # RepDistiller's init stage does (its SGD at the main learning rate); an Adam here
        # at an SGD-sized learning rate (0.05-0.2) wrecked the layers it initialised
        opt = make_optimizer(params, trainer.cfg.model_copy(update={"lr": stage.lr or trainer.cfg.lr}), trainer.device)
        distiller.train()
        for epoch in range(epochs):
            total, n = 0.0, 0
            for batch in trainer.stage_loader().iterate(epoch):
                with trainer.accelerator.autocast():
                    loss = stage.loss(distiller.context(batch))
                trainer.accelerator.backward(loss)
                opt.step()
                # no stage gradient may reach the main training's first step
                opt.zero_grad(set_to_none=True)
                total += float(loss.detach()) * batch["y"].shape[0]
                n += batch["y"].shape[0]
            row = {"stage": stage.name, "stage_epoch": epoch, "stage_loss": total / max(1, n)}
            rows.append(row)
            trainer.log(f"{stage.name} epoch {epoch + 1}/{epochs}  loss {row['stage_loss']:.4f}")
    return rows
