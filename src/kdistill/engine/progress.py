"""Progress you can watch: a heading line per training and a Rich progress bar per epoch.

The bar shows what is trained (its role: teacher, a scheme's step, student), the epoch, optimizer steps
done of the epoch's, images per second, the time left in the epoch and the running mean of
the training loss. It is drawn on stderr and only on a terminal (Rich draws nothing live
into a file or a pipe, so logs keep their one line per epoch), by the main process only,
and is removed when the epoch ends and its summary line is printed. Into a file or a pipe
(no terminal) a plain line is written instead every :data:`LINE_S` seconds within an epoch
(step, images per second, the time left in the epoch, the running loss), so a log is never
silent for minutes. ``train.progress: false`` (``kdistill train --quiet``) turns both off.

Reading the loss is a host synchronisation; the bar reads it at most every
:data:`REFRESH_S` seconds, so a GPU's queue is not stalled step by step.
"""

from __future__ import annotations

import sys
import time

from torch import Tensor

REFRESH_S = 0.25
LINE_S = 30.0


def heading(role: str, what: str, epochs: int, steps: int, device) -> str:
    """The line that opens a training of ``role``: ``── teacher: convnet4 · 10 epochs × 422 steps · cpu ──``."""
    return f"── {role}: {what} · {epochs} epoch{'s' if epochs != 1 else ''} × {steps} steps · {device} ──"


class EpochProgress:
    """A transient Rich bar for the steps of one epoch (a no-op when disabled)."""

    def __init__(self, enabled: bool, role: str, steps_per_epoch: int, epochs: int):
        self.enabled = bool(enabled) and sys.stderr.isatty()
        self.lines = bool(enabled) and not self.enabled  # a file or a pipe: a plain line now and then
        self.role, self.steps, self.epochs = role, steps_per_epoch, epochs
        self._bar = None
        self._task = None
        self._plain: list | None = None

    def start(self, epoch: int, done_steps: int = 0) -> None:
        if self.lines:  # [epoch, steps done, images, start, last line, steps done at the start]
            now = time.perf_counter()
            self._plain = [epoch, done_steps, 0, now, now, done_steps]
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
        if self._plain is not None:
            self._line(images, loss)
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

    def _line(self, images: int, loss: Tensor | float) -> None:
        """Every :data:`LINE_S` seconds: ``student 2/10: step 300/422 · 1,234 img/s · ETA 0:41 · loss 0.5123``."""
        p = self._plain
        p[1] += 1
        p[2] += images
        now = time.perf_counter()
        if now - p[4] < LINE_S:
            return
        p[4] = now
        spent = max(now - p[3], 1e-9)
        left = (self.steps - p[1]) * spent / max(p[1] - p[5], 1)
        value = float(loss.detach() if isinstance(loss, Tensor) else loss)  # one host sync per line
        sys.stderr.write(f"{self.role} {p[0] + 1}/{self.epochs}: step {p[1]}/{self.steps} · {p[2] / spent:,.0f} img/s"
                         f" · ETA {int(left) // 60}:{int(left) % 60:02d} · loss {value:.4f}\n")
        sys.stderr.flush()

    def stop(self) -> None:
        self._plain = None
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
