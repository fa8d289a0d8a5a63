"""Check a whole run before training anything: a run that will fail fails in seconds.

:func:`preflight` does, in order and without one optimizer step: refuse zero epochs; load
the data and check that its splits agree (input shape, label range; label ``-1`` only where
a transfer set supplies it); build every network untrained (the teacher, each ensemble
member, the student, and any other model a scheme names), loading the checkpoints that are
given so that keys and class counts are checked; instantiate every method term with its
typed settings against the real student and teacher (taps resolved, connectors sized); and
run the distiller once on an example batch from the training set (every tap recorded, every
term's loss computed). The networks it builds are its own and are discarded, so the run that
follows starts from the same seeds as without the check.

``kdistill train CONFIG --check`` runs only this.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig, RunConfig
from ..data import Dataset, DataSplits
from ..errors import ConfigError, DataError, KdistillError, ShapeError
from ..measure import count_params
from ..methods import create
from ..models import check_name
from .build import build_model, load_transfer, open_teacher_cache, prepare_data, teacher_adapter, with_num_data


@dataclass
class Preflight:
    """What the check built and found (the data is reused by the run that follows)."""

    data: DataSplits
    transfer: Any = None
    lines: list[str] = field(default_factory=list)
    seconds: float = 0.0


def check_epochs(cfg: RunConfig) -> None:
    """Refuse a run that would train nothing: ``train.epochs: 0`` (or a teacher to be
    trained in the run with ``teacher.train.epochs: 0``)."""
    if cfg.train.epochs == 0:
        raise ConfigError(
            "train.epochs is 0: nothing would be trained and an untrained student would be saved. "
            "Set train.epochs to 1 or more (kdistill eval evaluates a finished run without training)."
        )
    t = cfg.teacher
    if t is not None and t.kind == "default" and t.cache is None and cfg.teacher_train().epochs == 0:
        untrained = [m for m in (t.ensemble or [t]) if not m.checkpoint or t.finetune]
        if untrained:
            raise ConfigError(
                "teacher.train.epochs is 0 but the teacher has no checkpoint, so it would be used untrained. "
                "Set teacher.train.epochs to 1 or more, or teacher.checkpoint to trained weights."
            )


def check_device(cfg: RunConfig) -> None:
    """The configured device exists on this machine (``cuda`` without a GPU fails here,
    not with a traceback inside the first forward)."""
    for name in {cfg.train.device, cfg.teacher_train().device if cfg.teacher is not None else cfg.train.device}:
        if name == "auto" or name == "cpu":
            continue
        if name.startswith("cuda"):
            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            idx = int(name.split(":")[1]) if ":" in name and name.split(":")[1].isdigit() else 0
            if n == 0:
                raise ConfigError(f"train.device is {name!r} but this machine has no usable CUDA GPU "
                                  f"(torch {torch.__version__}); use device: auto or cpu.")
            if idx >= n:
                raise ConfigError(f"train.device is {name!r} but this machine has {n} GPU(s) (cuda:0..cuda:{n - 1}).")
        elif name.startswith("mps") and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"train.device is {name!r} but MPS is not available here; use device: auto or cpu.")


def check_names(cfg: RunConfig, extra_models: Sequence[tuple[str, ModelConfig]] = ()) -> None:
    """Every model name of the run resolves (zoo name, importable factory, existing folder)."""
    specs = [cfg.student.model] + [s.model for _, s in extra_models]
    t = cfg.teacher
    if t is not None:
        specs += [m.model for m in t.ensemble] + ([t.model] if t.model else [])
    for name in specs:
        check_name(name)


def check_splits(data: DataSplits) -> None:
    """Train, test and validation splits must agree on the input shape, and carry labels in
    ``[0, num_classes)`` (``-1``, "unlabelled", belongs to transfer sets only)."""
    parts: list[tuple[str, Dataset]] = [("training", data.train), ("test", data.test)]
    if data.val is not None:
        parts.append(("validation", data.val))
    shape = data.train.input_shape
    for what, part in parts[1:]:
        if tuple(part.input_shape) != tuple(shape):
            raise ShapeError(
                f"The {what} inputs have shape {tuple(part.input_shape)} but the training inputs "
                f"{tuple(shape)} (per sample, channels first); every split must have the same shape."
            )
    for what, part in parts:
        y = part.labels()
        if y.numel() and int(y.min()) < 0:
            vals = sorted(set(y[y < 0].tolist()))[:5]
            raise DataError(
                f"The {what} labels include {vals}; labels must lie in [0, {data.num_classes}). A label -1 "
                "(unlabelled) is allowed only in a transfer set (data.transfer), which the teacher labels."
            )
        if y.numel() and int(y.max()) >= data.num_classes:
            raise DataError(
                f"The {what} labels include {int(y.max())}, but the data has {data.num_classes} classes "
                f"(labels 0..{data.num_classes - 1}). Check the label encoding or data.options.num_classes."
            )


def _build(spec: ModelConfig, data: DataSplits, trust: bool, what: str, adapt=None) -> nn.Module:
    try:
        return build_model(spec.model, spec.kwargs, data, spec.checkpoint, trust, what, adapt=adapt)
    except KdistillError:
        raise
    except (TypeError, ValueError, RuntimeError, AttributeError, KeyError, ImportError) as e:
        # a factory's own exception (wrong kwargs, bad sizes): name the model and the message
        raise ConfigError(f"The {what} {spec.model!r} cannot be built with kwargs {spec.kwargs}: "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def _teacher(cfg: RunConfig, data: DataSplits, trust: bool, lines: list[str]):
    """The teacher a run will use, untrained (or with its checkpoint's weights)."""
    from ..teachers import EnsembleTeacher, ModuleTeacher

    t = cfg.teacher
    if t is None:
        return None, []
    if t.kind != "default":  # a registered kind makes (and may train) its teacher when the run starts
        lines.append(f"teacher: kind {t.kind!r}, made when the run starts")
        return None, []
    if t.cache is not None:
        lines.append(f"teacher: cache {t.cache}")
        return open_teacher_cache(t, data, trust), []
    members = t.ensemble or [ModelConfig(model=t.model, kwargs=t.kwargs, checkpoint=t.checkpoint)]
    many = len(members) > 1
    adapt = teacher_adapter(t, data)
    built = []
    for i, m in enumerate(members):
        what = f"teacher member {i}" if many else "teacher"
        built.append(_build(m, data, trust, what, adapt))
        state = (f"weights from {m.checkpoint}" + (", fine-tuned first" if t.finetune else "")
                 if m.checkpoint else "to be trained first")
        lines.append(f"{what}: {m.model} ({count_params(built[-1]):,} params, {state})")
    if not many:
        return ModuleTeacher(built[0], data.num_classes), members
    return EnsembleTeacher(built, t.combine), members


def check_method(method: Any, student: nn.Module, teacher: Any, train: Dataset, what: str = "method") -> list[str]:
    """Instantiate every term of ``method`` against ``student`` and ``teacher`` (taps
    resolved, connectors sized by an example) and run the distiller once on a small
    training batch; returns the terms as ``weight*name``."""
    method = with_num_data(method, len(train))
    n = min(4, len(train))
    example = train.example(n)
    if isinstance(method, dict):
        m = dict(method)
        distiller = create(m.pop("name", "kd"), student, teacher, example=example, **m)
    else:
        distiller = create(method, student, teacher, example=example)
    batch = train.take(torch.arange(n))
    if getattr(teacher, "views", None) is not None:  # a cache of augmented views: the first view of each
        batch["view"] = torch.zeros(n, dtype=torch.int64)
    if (batch["y"] < 0).any():  # a transfer row in the example: give the probe a label
        batch["y"] = batch["y"].clamp(min=0)
    try:
        out = distiller(batch)
        for term in distiller.terms:
            term.first_phase()  # builds a first phase's parts (params, loss) without running it
    except KdistillError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError, KeyError) as e:
        names = ", ".join(m.name for m in distiller.terms)
        raise ShapeError(
            f"The {what} ({names}) fails on an example batch of the training data: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    if not torch.isfinite(out["loss"]).all():
        raise ShapeError(f"The {what} gives a non-finite loss on an example batch before any training; "
                         "check the method's settings (temperature, weights) and the input scale.")
    return [f"{w:g}*{m.name}" for w, m in zip(distiller.weights, distiller.terms)]


def preflight(
    cfg: RunConfig,
    trust: bool = False,
    log: Callable[[str], None] | None = None,
    extra_models: Sequence[tuple[str, ModelConfig]] = (),
    scheme: bool = False,
) -> Preflight:
    """Check everything a run (or a scheme, with ``extra_models`` and ``scheme=True``)
    needs before training anything; raise one :class:`~kdistill.errors.KdistillError`
    naming the first problem. ``log`` gets one line per network and a closing line."""
    t0 = time.perf_counter()
    rng = torch.get_rng_state()
    lines: list[str] = []
    try:
        check_epochs(cfg)
        check_device(cfg)
        check_names(cfg, extra_models)  # before the data loads: a misspelt name fails in a second
        data = prepare_data(cfg)
        check_splits(data)
        # a generated MNIST-1D transfer set fits by construction and takes minutes to make:
        # the run makes it; a file is read (and checked) now
        t = cfg.data.transfer
        transfer = None if t is not None and t.source == "mnist1d" else load_transfer(cfg, data)
        if transfer is not None and cfg.teacher is None and not scheme:
            raise ConfigError("A transfer set (data.transfer) is labelled by the teacher; configure a teacher.")
        lines.append(f"data: {cfg.data.name}, {len(data.train)} train / {len(data.test)} test"
                     + (f" / {len(data.val)} val" if data.val is not None else "")
                     + f", inputs {tuple(data.input_shape)}, {data.num_classes} classes"
                     + (f", transfer set {len(transfer)}" if transfer is not None else "")
                     + (f", transfer set of {t.size} generated when the run starts" if t is not None and transfer is None
                        else ""))
        teacher, _ = _teacher(cfg, data, trust, lines)
        s = cfg.student
        student = _build(s, data, trust, "student")
        lines.append(f"student: {s.model} ({count_params(student):,} params)")
        extra = []
        for what, spec in extra_models:
            extra.append(_build(spec, data, trust, what))
            lines.append(f"{what}: {spec.model} ({count_params(extra[-1]):,} params)")
        train = data.train.concat(transfer) if transfer is not None else data.train
        method = cfg.method if isinstance(cfg.method, list) else dict(cfg.method)
        if not scheme and teacher is None and cfg.teacher is not None:
            lines.append("method: checked when the run starts (its teacher comes from the teacher kind)")
        elif not scheme:
            terms = check_method(method, student, teacher, train)
            lines.append("method: " + " + ".join(terms) + " (ran once on an example batch)")
        else:
            # a scheme's steps distil from the run's teacher or from its own models: try the
            # method against each of them as the teacher (a stand-in; each step checks again)
            from ..teachers import ModuleTeacher

            cands = ([teacher] if teacher is not None else []) + [ModuleTeacher(m, data.num_classes) for m in extra]
            terms = []
            for cand in cands:
                terms = check_method(method, _build(s, data, trust, "student"), cand, train)
            lines.append("method: " + (" + ".join(terms) if terms else "checked when each step starts"))
    finally:
        torch.set_rng_state(rng)
    report = Preflight(data, transfer, lines, time.perf_counter() - t0)
    if log is not None:
        for line in lines:
            log(f"  {line}")
        log(f"Checked in {report.seconds:.1f} s: data, networks, taps and method terms fit.")
    return report
