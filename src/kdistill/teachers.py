"""Teachers: anything that maps a batch to :class:`TeacherOutput`.

* :class:`ModuleTeacher` wraps a trained ``nn.Module``: frozen, always in eval mode, run
  without a graph.
* :class:`EnsembleTeacher` combines members as Hinton et al. (2015) do: arithmetic mean
  of their probabilities, mean of their logits, or the normalised geometric mean of their
  probabilities (which equals the softmax of the mean logits at every temperature).
* :data:`TEACHER_KINDS`: how a config's ``teacher:`` section becomes a teacher. The kind
  ``default`` (registered by :mod:`kdistill.runs.default_teacher`, an ordinary kind) is the model / ensemble /
  cache section; ``teacher: {kind: NAME, options: {...}}`` picks a kind registered with
  :func:`register_teacher_kind`, from any module (docs/ARCHITECTURE.md has the recipe).

The teacher is deliberately *not* a submodule of a distiller: it never enters the
optimizer, a ``state_dict`` of the student, or a DDP wrapper.

Teachers run under ``torch.no_grad`` rather than ``torch.inference_mode``: features from
inference mode cannot be saved for the student's backward pass (a bilinear loss such as
FSP or a Gram matrix needs them), and ``no_grad`` keeps no graph either.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import Registry, check_settings
from .errors import ConfigError
from .taps import FeatureTaps


@dataclass
class TeacherOutput:
    """What a teacher gives for one batch.

    Attributes:
        logits: ``(N, C)`` combined logits (for a mean-of-probabilities ensemble, the log of
            the mean probabilities at T=1).
        features: recorded features by tap spec.
        member_logits: ``(M, N, C)`` for ensembles, so soft targets can be formed at any T.
        combine: how members are combined (``None`` for a single teacher).
    """

    logits: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)
    member_logits: Tensor | None = None
    combine: str | None = None

    def log_soft_targets(self, temperature: float) -> Tensor:
        """Log of the soft targets at temperature ``T``."""
        if self.member_logits is not None and self.combine == "mean_prob":
            lp = F.log_softmax(self.member_logits.float() / temperature, dim=-1)
            return torch.logsumexp(lp, dim=0) - math.log(lp.shape[0])
        return F.log_softmax(self.logits.float() / temperature, dim=-1)

    def soft_targets(self, temperature: float) -> Tensor:
        return self.log_soft_targets(temperature).exp()


@runtime_checkable
class Teacher(Protocol):
    """The teacher protocol. ``features`` are tap specs (see :mod:`kdistill.taps`)."""

    num_classes: int | None

    def __call__(self, batch: dict, features: Sequence[str] = ()) -> TeacherOutput: ...

    def to(self, device) -> Teacher: ...


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    module.requires_grad_(False)
    return module


class ModuleTeacher:
    """A frozen module used as a teacher.

    Args:
        module: the trained network. It is put in eval mode and its parameters stop
            requiring gradients; ``train()`` on the module is overridden to stay in eval.
        num_classes: logit width, if known (checked against the student's).
    """

    def __init__(self, module: nn.Module, num_classes: int | None = None):
        self.module = freeze(module)
        # stay in eval mode whatever a caller does
        self.module.train = lambda mode=True: self.module  # type: ignore[method-assign]
        self.num_classes = num_classes

    def __call__(self, batch: dict, features: Sequence[str] = ()) -> TeacherOutput:
        with torch.no_grad():
            if features:
                with FeatureTaps(self.module, features) as taps:
                    logits = self.module(batch["x"])
                feats = dict(taps.features)
            else:
                logits, feats = self.module(batch["x"]), {}
        if getattr(self.module, "_compiled_call_impl", None) is not None:
            # a CUDA-graphed teacher's outputs live in a pool that the student's graph
            # replays may overwrite before the loss reads them
            logits, feats = logits.clone(), {k: v.clone() for k, v in feats.items()}
        return TeacherOutput(logits, feats)

    def to(self, device) -> ModuleTeacher:
        self.module.to(device)
        return self

    def parameters(self):
        return self.module.parameters()


COMBINE_MODES = ("mean_prob", "mean_logit", "geometric")


class EnsembleTeacher:
    """Several teachers combined into one (Hinton et al. 2015, section 1 and 3).

    Args:
        members: modules or teachers.
        combine: ``"mean_prob"`` (arithmetic mean of probabilities at the loss's
            temperature), ``"mean_logit"`` or ``"geometric"`` (normalised geometric mean of
            probabilities; identical to ``"mean_logit"`` because the per-member normalisers
            cancel).
    """

    def __init__(self, members: Sequence[nn.Module | ModuleTeacher], combine: str = "mean_prob"):
        if combine not in COMBINE_MODES:
            raise ConfigError(f"Unknown ensemble combine mode {combine!r}; use one of {COMBINE_MODES}.")
        if not members:
            raise ConfigError("An ensemble teacher needs at least one member.")
        self.members = [m if isinstance(m, ModuleTeacher) else ModuleTeacher(m) for m in members]
        self.combine = combine
        self.num_classes = self.members[0].num_classes

    def __call__(self, batch: dict, features: Sequence[str] = ()) -> TeacherOutput:
        outs = [m(batch, features) for m in self.members]
        stacked = torch.stack([o.logits.float() for o in outs])
        if self.combine == "mean_prob":
            logits = torch.logsumexp(F.log_softmax(stacked, -1), 0) - math.log(len(outs))
        else:
            logits = stacked.mean(0)
        # features: the first member's (feature methods distil from one network)
        return TeacherOutput(logits, outs[0].features, stacked, self.combine)

    def to(self, device) -> EnsembleTeacher:
        for m in self.members:
            m.to(device)
        return self

    def parameters(self):
        for m in self.members:
            yield from m.parameters()


# -- teacher kinds -----------------------------------------------------------------------
@dataclass(frozen=True)
class TeacherKind:
    """A registered way to make a run's teacher.

    Attributes:
        name: the ``teacher.kind`` that selects it.
        build: ``build(options, ctx)`` returns a :class:`Teacher`, or ``(teacher, record)``
            where ``record`` goes into results.json under ``teacher``. ``ctx`` is a
            :class:`kdistill.runs.TeacherContext` (the run's config, data, folder, and
            helpers to build and train a model).
        options: a dataclass of the kind's settings (``teacher.options``), checked at config
            load (unknown keys, types); None: the options dict is passed as it is.
        labelled: whether the run's record of the teacher names its kind (``"kind": name``).

    Hooks (each optional; ``None``: the kind's teacher is made when the run starts, and
    nothing before or after knows more of it). Every caller asks the kind; none names one:

    * ``preflight(cfg, data, trust, lines)``: the teacher built untrained (or from its
      checkpoints) for ``--check``, as ``(teacher, member configs)``, adding what it found
      to ``lines``;
    * ``untrained(cfg)``: whether the run would train a teacher of this kind (so that
      ``teacher.train.epochs: 0`` is refused);
    * ``share_key(cfg, mode)``, ``shared(cell_dir, cfg)``, ``reuse(cfg, shared)``: compare
      and sweep train one teacher per key (``mode``: ``per-seed`` or ``shared``), read what
      the first cell trained, and point the other cells' configs at it;
    * ``from_checkpoints(cfg, data, trust, source)``: the trained teacher a finished run's
      config names (``kdistill eval`` when the run folder holds no ``teacher/``), or None.
    """

    name: str
    build: Callable[[Any, Any], Any]
    options: type | None = None
    labelled: bool = True
    preflight: Callable[..., Any] | None = None
    untrained: Callable[[Any], bool] | None = None
    share_key: Callable[[Any, str], str | None] | None = None
    shared: Callable[[Any, Any], Any] | None = None
    reuse: Callable[[Any, Any], Any] | None = None
    from_checkpoints: Callable[..., Any] | None = None

    def check(self, options: dict[str, Any]) -> Any:
        """``teacher.options`` as the kind's ``options`` dataclass (raises ConfigError)."""
        if self.options is None:
            return dict(options)
        check_settings(f"Teacher kind {self.name!r}", self.options, options)
        return self.options(**options)

    def make(self, options: dict[str, Any], ctx: Any) -> tuple[Teacher, dict[str, Any]]:
        out = self.build(self.check(options), ctx)
        teacher, record = out if isinstance(out, tuple) else (out, {})
        if not isinstance(teacher, Teacher):
            raise ConfigError(f"Teacher kind {self.name!r} gave {type(teacher).__name__}, not a teacher "
                              "(a callable batch -> TeacherOutput with .to(device)).")
        return teacher, ({"kind": self.name, **record} if self.labelled else record)


TEACHER_KINDS: Registry[TeacherKind] = Registry("teacher kind")


def register_teacher_kind(name: str, options: type | None = None, **hooks: Any) -> Callable[[Callable], Callable]:
    """Register ``build(options, ctx)`` as the teacher kind ``name`` (``teacher.kind`` in a
    config); ``options`` is the dataclass of its settings; ``hooks`` are the optional
    :class:`TeacherKind` fields (``labelled``, ``preflight``, ``share_key``...). Returns the
    function unchanged."""

    def deco(build: Callable) -> Callable:
        TEACHER_KINDS.register(name)(TeacherKind(name, build, options, **hooks))
        return build

    return deco
