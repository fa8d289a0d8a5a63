"""Progress you can watch: a heading line per training and a Rich progress bar per epoch.

The bar shows what is trained (its role: teacher, a scheme's step, student), the epoch, optimizer steps
done of the epoch's, images per second, the time left in the epoch and the running mean of
the training loss. It is drawn on stderr and only on a terminal (Rich draws nothing live
into a file or a pipe, so logs keep their one line per epoch), by the main process only,
and is removed when the epoch ends and its summary line is printed. ``train.progress:
false`` (``kdistill train --quiet``) turns it off.

Reading the loss is a host synchronisation; the bar reads it at most every
:data:`REFRESH_S` seconds, so a GPU's queue is not stalled step by step.
"""

from __future__ import annotations

import sys
import time

from torch import Tensor

REFRESH_S = 0.25


def heading(role: str, what: str, epochs: int, steps: int, device) -> str:
    """The line that opens a training of ``role``: ``── teacher: convnet4 · 10 epochs × 422 steps · cpu ──``."""
    return f"── {role}: {what} · {epochs} epoch{'s' if epochs != 1 else ''} × {steps} steps · {device} ──"


class EpochProgress:
    """A transient Rich bar for the steps of one epoch (a no-op when disabled)."""

    def __init__(self, enabled: bool, role: str, steps_per_epoch: int, epochs: int):
        self.enabled = bool(enabled) and sys.stderr.isatty()
        self.role, self.steps, self.epochs = role, steps_per_epoch, epochs
        self._bar = None
        self._task = None

    def start(self, epoch: int, done_steps: int = 0) -> None:
        if not self.enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps · {task.fields[rate]} img/s · loss {task.fields[loss]}"),
            TextColumn("· ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(f"{self.role} {epoch + 1}/{self.epochs}", total=self.steps,
                                        completed=done_steps, rate="-", loss="-")
        self._t0, self._images, self._last = time.perf_counter(), 0, 0.0
        self._loss_sum, self._loss_n, self._pending = 0.0, 0, 0

    def step(self, images: int, loss: Tensor | float) -> None:
        """One optimizer step of ``images`` samples with this ``loss``."""
        if self._bar is None:
            return
        self._images += images
        self._pending += 1
        now = time.perf_counter()
        if now - self._last < REFRESH_S:
            return
        self._loss_sum += float(loss.detach() if isinstance(loss, Tensor) else loss)  # one value per refresh: the running loss is a sample mean
        self._loss_n += 1
        rate = self._images / max(now - self._t0, 1e-9)
        self._bar.update(self._task, advance=self._pending, rate=f"{rate:,.0f}",
                         loss=f"{self._loss_sum / self._loss_n:.4f}")
        self._pending, self._last = 0, now

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
