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
        member_weights: ``(M, N)`` each member's weight per sample (sums to one over
            members), or ``None``: equal weights.
    """

    logits: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)
    member_logits: Tensor | None = None
    combine: str | None = None
    member_weights: Tensor | None = None

    def combined(self, temperature: float) -> Tensor:
        """The members combined at temperature ``T``: log of the (weighted) mean
        probabilities for ``mean_prob``, the (weighted) mean logits otherwise."""
        m = self.member_logits.float()
        w = self.member_weights
        if w is None:
            w = torch.full(m.shape[:2], 1.0 / m.shape[0], device=m.device)
        w = w.reshape(*w.shape, *([1] * (m.dim() - 2)))
        if self.combine == "mean_prob":
            return torch.logsumexp(F.log_softmax(m / temperature, -1) + w.clamp_min(1e-30).log(), 0)
        return (m * w).sum(0)

    def log_soft_targets(self, temperature: float) -> Tensor:
        """Log of the soft targets at temperature ``T``."""
        if self.member_logits is not None and self.combine == "mean_prob":
            return self.combined(temperature)
        return F.log_softmax(self.logits.float() / temperature, dim=-1)

    def soft_targets(self, temperature: float) -> Tensor:
        return self.log_soft_targets(temperature).exp()


@dataclass
class TokenTopK(TeacherOutput):
    """A teacher output known by its top-k tokens per position (an LM teacher cache).

    ``logits`` holds the kept log-probabilities (``(..., k)``, *not* vocabulary-wide);
    losses read :attr:`topk_logprobs` and :attr:`topk_indices`.
    """

    topk_logprobs: Tensor | None = None
    topk_indices: Tensor | None = None

    def log_soft_targets(self, temperature: float) -> Tensor:
        raise ConfigError(
            "This teacher is a top-k cache of next-token log-probabilities: use a token-level method "
            "(forward_kl, reverse_kl, gkd, skew_kl, skew_reverse_kl, tvd), which compare on the kept tokens "
            "plus a tail bin."
        )


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
WEIGHTINGS = ("fixed", "entropy", "label", "route")


def _per_sample(values: Tensor, mask: Tensor | None) -> Tensor:
    """``(M, N)``: the mean of ``values (M, N, ...)`` over each sample's positions (those in ``mask``)."""
    flat = values.reshape(values.shape[0], values.shape[1], -1)
    if mask is None:
        return flat.mean(-1)
    m = mask.reshape(1, mask.shape[0], -1).to(flat.dtype)
    return (flat * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def member_weights(member_logits: Tensor, weighting: str, weights: Sequence[float] | None = None,
                   labels: Tensor | None = None, route: Tensor | None = None) -> Tensor:
    """``(M, N)`` weights of ``M`` members for ``N`` samples, summing to one over members.

    ``member_logits``: ``(M, N, C)`` or ``(M, N, L, V)`` (a causal LM: a sample's positions
    are those whose label is not -100). ``fixed``: ``weights`` (default equal); ``entropy``:
    ``softmax(-H)`` of the members' mean entropy on the sample (the surer member counts
    more); ``label``: each member's mean probability of the sample's labels, normalised;
    ``route``: one-hot on ``route[n]`` (a sample with ``route[n] < 0`` gets ``weights``).
    """
    m, n = member_logits.shape[:2]
    dev = member_logits.device
    base = torch.tensor(weights if weights is not None else [1.0] * m, dtype=torch.float32, device=dev)
    fixed = (base / base.sum())[:, None].expand(m, n)
    if weighting == "fixed":
        return fixed.contiguous()
    lp = F.log_softmax(member_logits.float(), -1)
    mask = None if labels is None or labels.dim() == 1 else labels != -100
    if weighting == "entropy":
        h = -(lp.exp() * lp).sum(-1)
        return torch.softmax(-_per_sample(h, mask), 0)
    if weighting == "label":
        if labels is None:
            raise ConfigError("Ensemble weighting 'label' needs labels in the batch.")
        y = labels.clamp_min(0).to(dev)
        p_y = lp.gather(-1, y.expand(m, *y.shape).unsqueeze(-1)).squeeze(-1).exp()
        p = _per_sample(p_y, mask) + 1e-12
        return p / p.sum(0, keepdim=True)
    if weighting == "route":
        hot = F.one_hot(route.clamp_min(0).long(), m).T.float()
        return torch.where(route[None, :] >= 0, hot, fixed)
    raise ConfigError(f"Unknown ensemble weighting {weighting!r}; use one of {WEIGHTINGS}.")


class EnsembleTeacher:
    """Several teachers combined into one (Hinton et al. 2015, section 1 and 3).

    Args:
        members: modules or teachers.
        combine: ``"mean_prob"`` (arithmetic mean of probabilities at the loss's
            temperature), ``"mean_logit"`` or ``"geometric"`` (normalised geometric mean of
            probabilities; identical to ``"mean_logit"`` because the per-member normalisers
            cancel).
        weights: fixed member weights (normalised to sum to one); default equal.
        weighting: how the weights are set per sample (:func:`member_weights`):
            ``"fixed"`` (``weights``), ``"entropy"`` (confidence: the members' mean entropy
            on the sample, ``softmax(-H)``), ``"label"`` (each member's mean probability of
            the sample's labels, normalised) or ``"route"`` (all weight on the member
            ``route(batch)`` names for the sample).
        route: ``route(batch) -> (N,)`` member indices, for ``weighting="route"`` (-1: use
            ``weights``).
    """

    def __init__(self, members: Sequence[nn.Module | ModuleTeacher], combine: str = "mean_prob",
                 weights: Sequence[float] | None = None, weighting: str = "fixed",
                 route: Callable[[dict], Tensor] | None = None):
        if combine not in COMBINE_MODES:
            raise ConfigError(f"Unknown ensemble combine mode {combine!r}; use one of {COMBINE_MODES}.")
        if not members:
            raise ConfigError("An ensemble teacher needs at least one member.")
        if weighting not in WEIGHTINGS:
            raise ConfigError(f"Unknown ensemble weighting {weighting!r}; use one of {WEIGHTINGS}.")
        if weights is not None and (len(weights) != len(members) or min(weights) < 0 or sum(weights) <= 0):
            raise ConfigError(f"Ensemble weights must be {len(members)} non-negative numbers with a positive sum; "
                              f"got {list(weights)}.")
        if weighting == "route" and route is None:
            raise ConfigError("Ensemble weighting 'route' needs a route (which member answers each sample).")
        # modules are wrapped; anything else is already a teacher (a cache, a wrapped one)
        self.members = [ModuleTeacher(m) if isinstance(m, nn.Module) else m for m in members]
        self.combine = combine
        self.weights = None if weights is None else [float(w) for w in weights]
        self.weighting = weighting
        self.route = route
        self.num_classes = self.members[0].num_classes

    def __call__(self, batch: dict, features: Sequence[str] = ()) -> TeacherOutput:
        outs = [m(batch, features) for m in self.members]
        stacked = torch.stack([o.logits.float() for o in outs])
        w = None
        if self.weights is not None or self.weighting != "fixed":
            route = self.route(batch).to(stacked.device) if self.weighting == "route" else None
            w = member_weights(stacked, self.weighting, self.weights, batch.get("y"), route)
        out = TeacherOutput(stacked[0], outs[0].features, stacked, self.combine, w)
        # features: the first member's (feature methods distil from one network)
        out.logits = out.combined(1.0)
        return out

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
