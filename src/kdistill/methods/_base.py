"""The Distiller: student + frozen teacher + weighted loss terms.

A *method* is a loss term (:class:`Method`): a small ``nn.Module`` that holds the
method's own trainable parts (connectors, paraphrasers, memory banks) and maps a
:class:`Context` (student logits and features, teacher output, labels) to its loss. A
:class:`Distiller` owns the student, the teacher and a list of terms with weights, and its
``forward(batch)`` returns ``{"loss", "logits", "loss_<term>"...}``. The seeds' total
losses (``alpha*KD + (1-alpha)*CE``, ``alpha*L_resp + L_feat``, ``beta*L_distill + L_CE``)
are all lists of weighted terms; hard-label cross-entropy is the term ``ce``. No method
special-cases another, and the trainer only sums, logs and steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._registry import check_types
from ..errors import ConfigError, did_you_mean
from ..taps import FeatureTaps, tap_list
from ..teachers import ModuleTeacher, Teacher, TeacherOutput


@dataclass
class Context:
    """Everything a loss term may read for one batch."""

    batch: dict
    student_logits: Tensor
    student_features: dict[str, Tensor] = field(default_factory=dict)
    teacher: TeacherOutput | None = None
    epoch: int = 0
    total_epochs: int = 1

    @property
    def labels(self) -> Tensor:
        return self.batch["y"]

    @property
    def teacher_logits(self) -> Tensor:
        if self.teacher is None:
            raise ConfigError("This method needs a teacher, but the distiller has none.")
        return self.teacher.logits


@dataclass
class FirstPhase:
    """A first phase run by the trainer before the main training (see
    :mod:`kdistill.engine.phases`).

    Attributes:
        name: shown in logs and metrics.jsonl.
        epochs: passes over the training data.
        params: what this phase's optimizer updates (e.g. student layers up to the hint,
            plus the regressor).
        loss: maps a :class:`Context` to the phase's loss.
        lr: learning rate (default: the run's).
    """

    name: str
    epochs: int
    params: list
    loss: Any
    lr: float | None = None


class Method(nn.Module):
    """A loss term. Subclasses set ``name``, ``Config`` (a dataclass of hyperparameters),
    ``default_weight`` and ``needs_teacher``, and implement :meth:`forward`.

    ``student_taps`` and ``teacher_taps`` list the features the term reads (tap specs,
    see :mod:`kdistill.taps`); the distiller records their union once per step.
    """

    name: ClassVar[str] = ""
    default_weight: ClassVar[float] = 1.0
    #: weight of the hard-label CE term added when the method is used alone
    default_ce_weight: ClassVar[float] = 1.0
    needs_teacher: ClassVar[bool] = True
    #: what the term's loss is for an optimizer that treats the two apart (DOT,
    #: :mod:`kdistill.engine.dot`): "task" (the hard-label CE) or "kd" (distillation)
    role: ClassVar[str] = "kd"

    @dataclass
    class Config:
        pass

    def __init__(self, cfg: Any, student: nn.Module, teacher: Teacher | None, example: Tensor | None):
        super().__init__()
        self.cfg = cfg
        self.student_taps: list[str] = []
        self.teacher_taps: list[str] = []

    def forward(self, ctx: Context) -> Tensor | dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        """Called by the trainer before each epoch (warm-ups, schedules)."""

    def first_phase(self) -> FirstPhase | None:
        """A first training phase this method needs before the main one (FitNets hints,
        FT's paraphraser, AB's initialisation), or None."""
        return None

    @classmethod
    def make_config(cls, **kwargs: Any) -> Any:
        """The typed config from keyword arguments; unknown keys name the closest valid one."""
        names = [f.name for f in dataclasses.fields(cls.Config)]
        for key in kwargs:
            if key not in names:
                valid = ", ".join(names) or "none"
                raise ConfigError(
                    f"Method {cls.name!r} has no setting {key!r}.{did_you_mean(key, names)} "
                    f"Its settings: {valid} (plus 'weight')."
                )
        lists = {f.name for f in dataclasses.fields(cls.Config) if "list[" in str(f.type)}
        kwargs = {k: tap_list(v) if k in lists else v for k, v in kwargs.items()}
        check_types(f"Method {cls.name!r}", cls.Config, kwargs)
        try:
            return cls.Config(**kwargs)
        except TypeError as e:
            raise ConfigError(f"Method {cls.name!r}: {e}.") from None


class Distiller(nn.Module):
    """Student + frozen teacher + weighted loss terms.

    The teacher is kept outside the module tree: it is never in ``parameters()``, the
    optimizer, ``state_dict()`` or a DDP wrapper. ``.to()`` moves it along.

    Args:
        student: the network being trained.
        teacher: a module (wrapped in :class:`ModuleTeacher`), any :class:`Teacher`, or None.
        terms: ``(weight, Method)`` pairs.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | Teacher | None,
        terms: Sequence[tuple[float, Method]],
    ):
        super().__init__()
        self.student = student
        self.terms = nn.ModuleList([m for _, m in terms])
        self.weights = [float(w) for w, _ in terms]
        self._teacher = [as_teacher(teacher)] if teacher is not None else []
        self.epoch, self.total_epochs = 0, 1
        s_specs = [s for m in self.terms for s in m.student_taps]
        self.teacher_specs = list(dict.fromkeys(t for m in self.terms for t in m.teacher_taps))
        self._taps = FeatureTaps(student, s_specs) if s_specs else None
        self.uses_teacher = any(m.needs_teacher for m in self.terms)
        #: set by an optimizer that needs the KD gradient apart (DOT's ``attach``): called in
        #: the training forward with ``(params, grads of the "kd" terms)``; the returned loss
        #: then backpropagates the "task" terms only (its value is unchanged)
        self.grad_split = None
        if self.uses_teacher and teacher is None:
            need = [m.name for m in self.terms if m.needs_teacher]
            raise ConfigError(f"Method(s) {', '.join(need)} need a teacher; none was given.")

    @property
    def teacher(self) -> Teacher | None:
        return self._teacher[0] if self._teacher else None

    def to(self, *args, **kwargs):
        super().to(*args, **kwargs)
        device = _device_of(args, kwargs)
        if device is not None and self.teacher is not None:
            self.teacher.to(device)
        return self

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        self.epoch, self.total_epochs = epoch, total_epochs
        for m in self.terms:
            m.on_epoch_start(epoch, total_epochs)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer gets: the student's and every term's parameters."""
        return [p for p in self.parameters() if p.requires_grad]

    def teacher_output(self, batch: dict) -> TeacherOutput | None:
        if not self.uses_teacher:
            return None
        return self.teacher(batch, self.teacher_specs)

    def context(self, batch: dict | Sequence[Tensor]) -> Context:
        """Run teacher and student once and collect what every term reads."""
        batch = as_batch(batch)
        t_out = self.teacher_output(batch)
        if self._taps is not None:
            with self._taps as taps:
                logits = self.student(batch["x"])
            feats, taps.features = dict(taps.features), {}  # hold no graph between steps
        else:
            logits, feats = self.student(batch["x"]), {}
        return Context(batch, logits, feats, t_out, self.epoch, self.total_epochs)

    def forward(self, batch: dict | Sequence[Tensor]) -> dict[str, Tensor]:
        """One batch -> ``{"loss", "logits", "loss_<term>"...}``. ``batch`` is a dict
        ``{"x", "y"[, "index"]}`` or an ordinary ``(x, y)`` pair from a DataLoader."""
        ctx = self.context(batch)
        logits = ctx.student_logits
        out: dict[str, Tensor] = {}
        total = logits.new_zeros((), dtype=torch.float32)
        totals = {"task": total, "kd": total}
        for w, term in zip(self.weights, self.terms):
            if w == 0:
                continue
            value = term(ctx)
            parts = value if isinstance(value, dict) else {"": value}
            for part, v in parts.items():
                key = f"loss_{term.name}" + (f"_{part}" if part else "")
                out[key] = w * v
                role = "task" if term.role == "task" else "kd"
                totals[role] = totals[role] + out[key]
                total = total + out[key]
        return {"loss": self._split(total, totals), "logits": logits, **out}

    def _split(self, total: Tensor, totals: dict[str, Tensor]) -> Tensor:
        """The total loss; with a ``grad_split`` set (and a training forward that builds a
        graph), the "kd" part's gradient goes to it now and the returned loss, equal in
        value, carries only the "task" part's gradient."""
        kd_loss = totals["kd"]
        if self.grad_split is None or not (self.training and torch.is_grad_enabled() and kd_loss.requires_grad):
            return total
        params = self.trainable_parameters()
        grads = torch.autograd.grad(kd_loss, params, retain_graph=True, allow_unused=True)
        self.grad_split(params, grads)
        task = totals["task"]
        if not task.requires_grad:  # no task term: a loss that still backpropagates (zeros)
            task = task + 0.0 * kd_loss
        return task + kd_loss.detach()


def _device_of(args: tuple, kwargs: dict) -> torch.device | None:
    """The device a ``Module.to(...)`` call names (``to(device)``, ``to(device, dtype)``,
    ``to(tensor)``, ``to(device=...)``), or None when it names only a dtype or layout."""
    if kwargs.get("device") is not None:
        return torch.device(kwargs["device"])
    if isinstance(kwargs.get("tensor"), Tensor):
        return kwargs["tensor"].device
    for a in args:
        if isinstance(a, Tensor):
            return a.device
        if isinstance(a, (str, int, torch.device)):
            return torch.device(a)
    return None
def as_batch(batch: dict | Sequence[Tensor]) -> dict:
    """A batch as the dict the terms read: ``(x, y)`` (a ``TensorDataset`` loader's list,
    or a tuple) becomes ``{"x": x, "y": y}``; ``(x, y, index)`` also keys the index."""
    if isinstance(batch, dict):
        if "x" not in batch:
            raise ConfigError(f"A batch dict needs 'x' (and 'y' for labels); got keys {sorted(batch)}.")
        return batch
    if isinstance(batch, (tuple, list)) and 2 <= len(batch) <= 3 and all(isinstance(t, Tensor) for t in batch):
        return dict(zip(("x", "y", "index"), batch))
    raise ConfigError(
        f"A batch must be a dict {{'x', 'y'}} or an (x, y) pair of tensors, got {type(batch).__name__}"
        + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "") + "."
    )


def as_teacher(teacher: nn.Module | Teacher) -> Teacher:
    if isinstance(teacher, nn.Module):
        return ModuleTeacher(teacher)
    return teacher
