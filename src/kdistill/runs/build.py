"""What a run is built from: its data (subset, split, transfer set), its models (checked
against the data with one probe forward) and a teacher from checkpoints."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..config import RunConfig, TeacherConfig
from ..data import ArrayDataset, DataSplits, load_dataset, mnist1d_transfer, split, subset
from ..data.contract import contract_of
from ..engine.checkpoint import load_into, load_weights
from ..errors import ConfigError, DataError, ShapeError
from ..measure import count_params, param_bytes
from ..methods import METHODS
from ..models import TrustCode, create_model, require_trusted
from ..teacher_input import Adapter, InputSpec, card_spec
from ..teachers import EnsembleTeacher, ModuleTeacher, Teacher


# -- data ----------------------------------------------------------------------------------
def prepare_data(cfg: RunConfig) -> DataSplits:
    """Load, subset, split and validate the run's data (the transfer set is separate)."""
    d = cfg.data
    twice = sorted(set(d.options) & {"root", "resident", "workers", "resident_budget_mb"})
    if twice:
        raise ConfigError(f"data.options.{twice[0]} repeats the data section's own key; set data.{twice[0]} instead.")
    splits = load_dataset(d.name, root=d.root, decode=d.decode_options(), **d.options)
    train = splits.train
    if d.subset:
        train = subset(train, d.subset, seed=cfg.train.seed)
    val = splits.val
    if d.val_split > 0:
        train, val = split(train, d.val_split, seed=cfg.train.seed)
    for part in (train, splits.test, val):
        if part is not None:
            part.validate()
    if d.class_names is not None:
        _name_classes(d.class_names, [p for p in (train, splits.test, val) if p is not None])
    return DataSplits(train, splits.test, val)


def _name_classes(names: list[str], parts: list[Any]) -> None:
    """``data.class_names`` onto every split (label = position), checked against the label space."""
    k = parts[0].num_classes
    if len(names) != k or len(set(names)) != len(names):
        raise ConfigError(f"data.class_names lists {len(names)} name(s) ({len(set(names))} distinct), but the "
                          f"dataset has {k} classes; give one distinct name per class, label order.")
    for part in parts:
        if not hasattr(part, "names"):
            raise ConfigError(f"data.class_names: the source {part.name!r} does not carry class names.")
        part.names = list(names)


def load_transfer(cfg: RunConfig, data: DataSplits) -> ArrayDataset | None:
    """The config's transfer set (unlabelled inputs the teacher labels), or ``None``."""
    t = cfg.data.transfer
    if t is None:
        return None
    if t.source == "mnist1d":
        ds = mnist1d_transfer(t.size, seed=t.seed, length=data.input_shape[-1])
    else:
        if not t.path or not Path(t.path).is_file():
            raise DataError(f"Transfer set file {t.path!r} not found; set data.transfer.path to an .npz with array 'x'.")
        try:
            arr = np.load(t.path, allow_pickle=False)
            if "x" not in arr:
                raise DataError(f"Transfer set {t.path} has no array 'x'.")
            x = torch.from_numpy(np.asarray(arr["x"]).astype(np.float32))[: t.size]
        except (ValueError, OSError) as e:
            raise DataError(f"Transfer set {t.path} cannot be read as an .npz of numbers: {e}") from None
        ds = ArrayDataset(x, torch.full((x.shape[0],), -1), data.num_classes, "transfer")
    if ds.input_shape != data.input_shape:
        raise ShapeError(
            f"The transfer set's inputs have shape {ds.input_shape}, the dataset's {data.input_shape}; "
            "they must match."
        )
    ds.num_classes = data.num_classes
    ds.validate(require_labels=False)
    return ds


# -- models --------------------------------------------------------------------------------
def build_model(name: str, kwargs: dict, data: DataSplits, checkpoint: str | None = None,
                trust: bool = False, what: str = "model", trust_code: TrustCode = True,
                source: str | None = None, log=None, adapt=None) -> nn.Module:
    """A zoo model for ``data`` (its classes and input shape), with ``checkpoint``'s weights
    when given, checked by one probe forward.

    ``trust_code``: ``True`` for a config the user gave (their names are theirs to run);
    ``False`` for a config read from a run folder (``source``), where an importable factory
    is refused (see :func:`kdistill.models.require_trusted`). ``log`` gets one line saying
    what was loaded; ``adapt`` (a module wrapper, see :mod:`kdistill.teacher_input`) is
    applied before the probe.
    """
    require_trusted(name, kwargs, trust_code, source or f"The {what}'s config")
    kw = dict(kwargs)  # an explicit num_classes / input_shape wins; check_model then reports a mismatch
    shape = adapt.input_shape(data.input_shape) if adapt is not None else data.input_shape
    model = create_model(name, kw.pop("num_classes", data.num_classes), tuple(kw.pop("input_shape", shape)),
                         trust_code=trust_code, **kw)
    if checkpoint:
        info = load_into(model, load_weights(checkpoint, trust=trust), what)
        if log is not None:
            how = f"; key prefixes mapped: {' '.join(info['mapped'])}" if info["mapped"] else ""
            log(f"Loaded the {what} {name} from {checkpoint} ({info['tensors']} tensors{how}).")
    if adapt is not None:
        model = adapt(model)
    check_model(model, data, what)
    return model


def named_models(cfg: RunConfig) -> frozenset[str]:
    """Every model name a config gives (student, teacher, ensemble members, a scheme's
    models): the names a user who passed this config asked to run, wherever the run's own
    files name them again (``trust_code`` of :func:`kdistill.runs.load_saved`)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "model" and isinstance(v, str):
                    found.add(v)
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(cfg.model_dump(mode="json"))
    return frozenset(found)


def check_model(model: nn.Module, data: DataSplits, what: str) -> None:
    """One probe forward: the model must accept the data and give ``num_classes`` logits."""
    example = data.train.example(2)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example)
    except (RuntimeError, ValueError) as e:
        raise ShapeError(
            f"The {what} does not accept inputs of shape {tuple(example.shape[1:])} from dataset "
            f"{data.train.name!r} (channels, size): {str(e).splitlines()[0]}"
        ) from None
    finally:
        model.train(was)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[1] != data.num_classes:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ShapeError(
            f"The {what} gives outputs of shape {shape}, but the dataset has {data.num_classes} "
            "classes; it must give (batch, classes) logits."
        )


def model_record(model: nn.Module, name: str, kwargs: dict, data: DataSplits) -> dict[str, Any]:
    """What ``model.json`` holds: how to rebuild the network, its size, and what it takes
    and answers: the input contract (``preprocess``, :mod:`kdistill.data.contract`) and the
    class names, when the data has them."""
    record = {"model": name, "kwargs": kwargs, "num_classes": data.num_classes,
              "input_shape": list(data.input_shape), "params": count_params(model), "bytes": param_bytes(model)}
    contract = contract_of(data.train)
    if contract is not None:
        record["preprocess"] = contract
    names = getattr(data.train, "class_names", None)
    if names and len(names) == data.num_classes:
        record["class_names"] = [str(n) for n in names]
    return record


def with_num_data(method: Any, num_data: int) -> Any:
    """Fill ``num_data`` (the training-set size) into every term whose config has that
    setting and leaves it unset: methods with per-sample state, such as CRD's memory banks."""

    def fill(term: Any) -> Any:
        if not isinstance(term, dict) or term.get("num_data") is not None:
            return term
        cls = METHODS.get(term.get("name", "kd"))
        if "num_data" in {f.name for f in dataclasses.fields(cls.Config)}:
            return {**term, "num_data": num_data}
        return term

    return [fill(t) for t in method] if isinstance(method, list) else fill(method)


def teacher_adapter(t: TeacherConfig | None, data: DataSplits | None = None):
    """A wrapper that gives the teacher's network its own input format (``teacher.input``),
    or ``None`` when the teacher takes the data as it is. The data's own normalisation
    (``data_mean``/``data_std``) defaults to what the dataset declares it applied."""
    if t is None or t.input is None:
        return None
    spec = t.input.model_dump(exclude={"auto"})
    if t.input.auto:  # the card's values, then the keys the config gives explicitly
        if t.ensemble:
            raise ConfigError("teacher.input: auto reads one model's card; an ensemble's members may differ, "
                              "so give teacher.input's mean, std and size explicitly.")
        spec = {**card_spec(t.model, t.checkpoint, t.kwargs),
                **{k: spec[k] for k in t.input.model_fields_set if k != "auto"}}
    norm = getattr(data.train, "normalization", None) if data is not None else None
    if norm is not None and not {"data_mean", "data_std"} & t.input.model_fields_set:
        spec["data_mean"], spec["data_std"] = (torch.as_tensor(v, dtype=torch.float64).flatten().tolist() for v in norm[:2])
    return Adapter(InputSpec.make(**spec))


def teacher_from_checkpoints(t: TeacherConfig, data: DataSplits, trust: bool = False, trust_code: TrustCode = True,
                             source: str | None = None) -> Teacher:
    """The teacher of a config whose model (or every ensemble member) has a checkpoint.
    ``trust_code`` and ``source``: as for :func:`build_model` (``False`` for a config read
    from a run folder)."""
    members = t.ensemble or [t]
    missing = [i for i, m in enumerate(members) if not m.checkpoint]
    if t.cache is not None or missing:
        raise ConfigError(
            "This needs trained teachers: set teacher.checkpoint (or each ensemble member's), e.g. to "
            "runs/<run>/teacher/model.safetensors from an earlier `kdistill train`."
        )
    many = len(members) > 1
    modules = [build_model(m.model, m.kwargs, data, m.checkpoint, trust, f"teacher member {i}" if many else "teacher",
                           trust_code, source, adapt=teacher_adapter(t, data)) for i, m in enumerate(members)]
    if not many:
        return ModuleTeacher(modules[0], data.num_classes)
    return EnsembleTeacher(modules, t.combine)


def open_teacher_cache(t: TeacherConfig, data: DataSplits, trust: bool = False):
    """The cached teacher ``t.cache``, refused unless made for ``data`` and, when the config
    also names the teacher with checkpoints (``model`` + ``checkpoint``, or an ensemble),
    by that teacher (weights fingerprint): a cache another teacher wrote is not used."""
    from ..cache import CachedTeacher

    members = t.ensemble or ([t] if t.model is not None else [])
    known = None
    if members and all(m.checkpoint for m in members):
        known = teacher_from_checkpoints(t.model_copy(update={"cache": None}), data, trust)
    return CachedTeacher.open(t.cache, data.train, num_classes=data.num_classes, teacher=known)
