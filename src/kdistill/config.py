"""The configuration of a run: YAML validated by pydantic, with clear errors.

``load_config(path, overrides)`` reads a YAML file, applies ``--set section.key=value``
overrides (values parsed as YAML), and validates everything before anything runs: an
unknown key names the closest valid one, a wrong type names the key and what it needs,
and method settings are checked against the method's own typed config.

Config files are shared like run folders, so reading one is bounded (:func:`parse_yaml`,
:func:`check_structure`): its size, nesting depth, the number of values once YAML aliases
are expanded ("billion laughs"), self-referencing anchors, and integer and string sizes.
Each limit, when hit, is named in a :class:`ConfigError`.
"""

from __future__ import annotations

import copy
import datetime
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from .data.decode import DecodeOptions
from .data.recipe import RecipeConfig
from .errors import ConfigError, KdistillError, did_you_mean
from .safe_read import refuse_bool_numbers
from .task import DEFAULT_TASK, task_named

# limits on a config document (see the module docstring); generous for any real config
MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_VALUES = 100_000
MAX_STRING = 1 << 16
MAX_INT = 1 << 64

PosInt = Annotated[int, Field(ge=1, le=10**9)]
NonNegFloat = Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data):
        return refuse_bool_numbers(cls, data)


class AugmentConfig(Strict):
    """On-device augmentation of training inputs."""

    shift: Annotated[int, Field(ge=0, le=64)] = 0
    flip: bool = False


class TransferConfig(Strict):
    """Extra inputs without labels, labelled by the teacher's soft targets.

    ``source: mnist1d`` generates ``size`` samples with generator seed ``seed``;
    ``source: npz`` reads array ``x`` from ``path``.
    """

    source: Literal["mnist1d", "npz"] = "mnist1d"
    size: Annotated[int, Field(ge=1, le=10**8)] = 25000
    seed: int = 1
    path: str | None = None


_DECODE = DecodeOptions()


class DataConfig(Strict):
    name: str = "mnist1d"
    root: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    subset: PosInt | None = None
    val_split: Annotated[float, Field(ge=0.0, le=0.9)] = 0.0
    batch_size: Annotated[int, Field(ge=1, le=1 << 20)] = 128
    eval_batch_size: Annotated[int, Field(ge=1, le=1 << 20)] = 1024
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    transfer: TransferConfig | None = None
    #: the on-device augmentation recipe (RandomResizedCrop, colour, TrivialAugment, Mixup/CutMix, ...)
    recipe: RecipeConfig | None = None
    #: image sources: decode once into memory (true), per batch in workers (false), or
    #: resident when the decoded images fit resident_budget_mb (auto); the defaults are
    #: DecodeOptions' (kdistill.data.decode), the options object the sources receive
    resident: bool | Literal["auto"] = _DECODE.resident
    resident_budget_mb: Annotated[float, Field(gt=0, le=1e9, allow_inf_nan=False)] = _DECODE.resident_budget_mb
    #: DataLoader worker processes decoding streamed images (default: the cores less one, at most 8)
    workers: Annotated[int, Field(ge=0, le=64)] | None = _DECODE.workers
    #: class names, label = position (overrides the source's own names: folder names, a ClassLabel)
    class_names: list[str] | None = None

    def decode_options(self) -> DecodeOptions:
        """How image sources decode, as the one typed object they take."""
        return DecodeOptions(resident=self.resident, resident_budget_mb=self.resident_budget_mb, workers=self.workers)

    @model_validator(mode="after")
    def _one_augmentation(self):
        if self.recipe is not None and (self.augment.shift or self.augment.flip):
            raise ValueError("give data.augment (shift/flip) or data.recipe, not both; the recipe has its own flip")
        return self


class ModelConfig(Strict):
    model: Annotated[str, Field(min_length=1)]  # a name or hf:PATH; empty is a mistake
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None


class TrainConfig(Strict):
    epochs: Annotated[int, Field(ge=0, le=100000)] = 10
    #: stop after this many optimizer steps, however many epochs that takes (it replaces
    #: ``epochs``, as transformers' ``max_steps`` does; the learning-rate schedule spans it);
    #: 0: train ``epochs`` epochs
    max_steps: Annotated[int, Field(ge=0, le=10**12)] = 0
    #: "dot": SGD with one momentum for the distillation gradient and one for the task's
    #: (DOT, Zhao et al. ICCV 2023; kdistill.engine.dot), the gap set by dot_delta
    optimizer: Literal["sgd", "adamw", "adam", "dot"] = "adamw"
    dot_delta: Annotated[float, Field(ge=0, lt=1)] = 0.075
    lr: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] = 1e-3
    weight_decay: NonNegFloat = 0.0
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    nesterov: bool = False
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    warmup_epochs: Annotated[float, Field(ge=0, le=100000)] = 0.0
    milestones: list[Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=lambda: [0.5, 0.75])
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.1
    grad_accum: Annotated[int, Field(ge=1, le=4096)] = 1
    grad_clip: Annotated[float, Field(gt=0, le=1e9)] | None = None
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    seed: Annotated[int, Field(ge=-(1 << 63), lt=1 << 64)] = 0  # what torch.manual_seed takes
    deterministic: bool = False
    compile: bool = False
    #: torch.compile mode; "reduce-overhead" adds CUDA graphs (static batch shapes only)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    #: NHWC layout for student and teacher networks and image batches; "auto": on with image
    #: (N, C, H, W) data on every device (cuDNN and oneDNN both run NHWC convolutions faster)
    channels_last: bool | Literal["auto"] = "auto"
    #: what train.compile compiles: "networks" (student and teacher networks, each on its
    #: own) or "step" (the whole forward: teacher, student and loss terms in one graph, so a
    #: CUDA-graphed step also covers the loss and a teacher cache's lookup)
    compile_scope: Literal["networks", "step"] = "networks"
    #: shard the student (and the terms' connectors) over the processes with FSDP2 through
    #: Accelerate, instead of DDP's whole copy per process; needs 2+ processes (torchrun /
    #: accelerate launch). See kdistill.engine.sharding.
    fsdp: bool = False
    #: module classes that become FSDP units of their own besides the student (e.g. ["BasicBlock"])
    fsdp_wrap: list[str] = Field(default_factory=list)
    eval_every: PosInt = 1
    # on CUDA, NaN/Inf is tested every log_every steps (a per-step test is a host sync)
    log_every: PosInt = 50
    checkpoint_every: Annotated[int, Field(ge=0, le=10**9)] = 0
    on_nonfinite: Literal["stop", "skip"] = "stop"
    #: experiment trackers (through Accelerate's tracker classes), written to <run>/trackers
    log_with: list[Literal["tensorboard", "mlflow"]] = Field(default_factory=list)
    progress: bool = True

    @model_validator(mode="after")
    def _fsdp_alone(self):
        if self.fsdp and self.compile:
            raise ValueError("train.fsdp does not combine with train.compile in this version; drop one of them")
        if self.fsdp_wrap and not self.fsdp:
            raise ValueError("train.fsdp_wrap names FSDP units; it needs train.fsdp: true")
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu") and not v.startswith(("cuda", "mps")):
            raise ValueError("device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        return v


class TeacherInputConfig(Strict):
    """The teacher's own input format, when it differs from the data's (a teacher pretrained
    elsewhere): see :mod:`kdistill.teacher_input`. Batches are converted on the device."""

    mean: list[float] | None = None
    std: list[float] | None = None
    size: int | list[int] | None = None
    channels: Annotated[int, Field(ge=1, le=64)] | None = None
    data_mean: list[float] = Field(default_factory=lambda: [0.0])
    data_std: list[float] = Field(default_factory=lambda: [1.0])
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = None
    crop_pct: Annotated[float, Field(gt=0, le=1)] | None = None
    #: take mean, std, size, interpolation and crop from the teacher's own card (timm's
    #: pretrained_cfg, a weights sidecar, an hf: processor config); keys given here win
    auto: bool = False


class TeacherConfig(Strict):
    """A teacher: one model, an ensemble of models, or cached outputs (``kind: default``,
    the default); or ``kind: NAME`` with ``options``, a kind registered with
    :func:`kdistill.teachers.register_teacher_kind` (its options checked at load).

    A model without ``checkpoint`` is trained first, in the same run, with ``train``
    overriding the run's train section and ``augment`` (if given) replacing the data
    section's augmentation.
    """

    kind: str = "default"
    options: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None
    ensemble: list[ModelConfig] = Field(default_factory=list)
    combine: Literal["mean_prob", "mean_logit", "geometric"] = "mean_prob"
    #: an ensemble's fixed member weights (default equal), or per-sample confidence weights:
    #: ``entropy`` (softmax of minus each member's entropy) or ``label`` (its probability of
    #: the label); see kdistill.teachers.member_weights
    weights: list[Annotated[float, Field(ge=0)]] | None = None
    weighting: Literal["fixed", "entropy", "label"] = "fixed"
    cache: str | None = None
    train: dict[str, Any] = Field(default_factory=dict)
    augment: AugmentConfig | None = None
    #: the teacher's input normalisation/resolution/channels, converted per batch on the device
    input: TeacherInputConfig | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _input_auto(cls, v):
        return {"auto": True} if v == "auto" else v
    #: train a teacher that has a checkpoint further (fine-tune it, with ``train``) before
    #: distilling, into ``RUN/teacher``; without it a checkpoint is used as it is
    finetune: bool = False

    @model_validator(mode="after")
    def _one_kind(self):
        if self.kind != "default":
            if self.model is not None or self.ensemble or self.cache is not None:
                raise ValueError(f"teacher kind {self.kind!r} takes its settings in teacher.options; "
                                 "model, ensemble and cache belong to kind 'default'")
            check_teacher_kind(self.kind, self.options)
            TrainConfig(**self.train)
            return self
        if self.options:
            raise ValueError("teacher.options are the settings of a registered teacher kind; set teacher.kind too")
        kinds = [self.model is not None, bool(self.ensemble), self.cache is not None]
        if sum(kinds) == 0:
            raise ValueError("give the teacher a 'model', an 'ensemble' list or a 'cache' path")
        if self.model is not None and self.ensemble:
            raise ValueError("give either 'model' or 'ensemble', not both")
        if self.weights is not None and (len(self.weights) != len(self.ensemble) or sum(self.weights) <= 0):
            raise ValueError("teacher.weights: one non-negative number per ensemble member, with a positive sum")
        TrainConfig(**self.train)
        return self


class OutputConfig(Strict):
    dir: str = "runs"
    name: str | None = None


class RunConfig(Strict):
    """The one run config. ``task`` picks the kind of run (:mod:`kdistill.task`); a task whose
    sections differ (``causal-lm``: text data, ``hf:`` models, an ``lm`` section) validates
    the document as its own subclass of this class, so every config is a ``RunConfig``."""

    #: the kind of run (a registered task); the default is left out of config.yaml
    task: str = DEFAULT_TASK
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig | None = None
    student: ModelConfig
    method: dict[str, Any] | list[dict[str, Any]] = Field(default_factory=lambda: {"name": "kd"})
    scheme: dict[str, Any] | None = None
    train: TrainConfig = Field(default_factory=TrainConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("method")
    @classmethod
    def _methods(cls, v):
        check_method(v)
        return {"name": "kd", **v} if isinstance(v, dict) else v

    @field_validator("task")
    @classmethod
    def _task(cls, v):
        try:
            task_named(v)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return v

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        out = handler(self)
        if isinstance(out, dict) and out.get("task") == DEFAULT_TASK:
            out.pop("task")  # config.yaml of an image run reads as before tasks existed
        return out

    def teacher_train(self) -> TrainConfig:
        """The teacher's train settings: the run's, overridden by ``teacher.train``."""
        base = self.train.model_dump()
        base.update(getattr(self.teacher, "train", None) or {})  # served/multi LM teachers have none
        return TrainConfig(**base)

    def method_names(self) -> list[str]:
        m = self.method
        return [m.get("name", "kd")] if isinstance(m, dict) else [t.get("name") for t in m]


def check_method(method: dict | list) -> None:
    """Validate method names and settings against the registry (raises ValueError)."""
    from .methods import METHODS

    terms = [method] if isinstance(method, dict) else method
    for term in terms:
        if not isinstance(term, dict):
            raise ValueError(f"each method term must be a mapping, got {term!r}")
        name = term.get("name", "kd")
        if name not in METHODS:
            raise ValueError(
                f"unknown method {name!r}.{did_you_mean(str(name), METHODS.names())} "
                f"Known: {', '.join(METHODS.names())}"
            )
        settings = {k: v for k, v in term.items() if k not in ("name", "weight", "alpha", "ce_weight")}
        for key in ("weight", "alpha", "ce_weight"):
            v = term.get(key)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)):
                raise ValueError(f"method {key} must be a finite number, got {v!r}")
        try:
            METHODS.get(name).make_config(**settings)
        except KdistillError as e:
            raise ValueError(str(e)) from None
        except TypeError as e:
            raise ValueError(f"method {name!r}: {e}") from None


def check_teacher_kind(kind: str, options: dict) -> None:
    """A registered teacher kind and its options (raises ValueError). A kind registered in
    your own module must be imported before the config is loaded."""
    from .teachers import TEACHER_KINDS

    if kind not in TEACHER_KINDS:
        known = ", ".join(["default", *(n for n in TEACHER_KINDS.names() if n != "default")])
        raise ValueError(
            f"unknown teacher kind {kind!r}.{did_you_mean(str(kind), TEACHER_KINDS.names())} Known: {known} "
            "(a kind registered in your own module must be imported before the config is loaded)"
        )
    try:
        TEACHER_KINDS.get(kind).check(options)
    except KdistillError as e:
        raise ValueError(str(e)) from None


def _set(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=3"`` -> ``("train.epochs", 3)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"Override {text!r} must look like section.key=value.")
    try:
        value = parse_yaml(raw, f"--set {key.strip()}") if raw.strip() else None
    except ConfigError as e:
        if not isinstance(e.__cause__, yaml.YAMLError):
            raise
        value = raw  # not YAML: the text as given
    return key.strip(), value


def _mark(event: Any) -> str:
    m = getattr(event, "start_mark", None)
    return f" (line {m.line + 1})" if m is not None else ""


def parse_yaml(text: str, where: str) -> Any:
    """One YAML document, read within the limits of the module docstring.

    The event stream is checked first (size, depth, alias count) without building
    anything, so a hostile document is refused before it can recurse or expand; the built
    document is then checked by :func:`check_structure`.
    """
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{where} is {len(text):,} characters; a config is at most {MAX_CONFIG_BYTES:,}.")
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise ConfigError(f"{where} nests deeper than {MAX_DEPTH} levels{_mark(event)}; "
                                      "a config needs a few.")
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            elif isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_STRING:
                raise ConfigError(f"{where} holds a value of {len(event.value):,} characters{_mark(event)}; "
                                  f"at most {MAX_STRING:,}.")
            elif isinstance(event, yaml.ScalarEvent) and event.style is None and len(event.value) > 24 and \
                    re.fullmatch(r"[-+]?[0-9_]+", event.value):
                raise ConfigError(f"{where} holds an integer of {len(event.value):,} digits{_mark(event)}; "
                                  "at most 64 bits.")
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {e}") from e
    except Exception as e:  # noqa: BLE001  (the safe loader runs no code; anything else is a bad document:
        # int-digit limits, "!!int" of an empty scalar raising IndexError, ...)
        raise ConfigError(f"{where} cannot be read as a config: {type(e).__name__}: {e}") from None
    check_structure(doc, where)
    return doc


def check_structure(doc: Any, where: str = "The config") -> None:
    """Refuse a document (parsed YAML, ``--set`` values, a Python dict) that nests deeper
    than :data:`MAX_DEPTH`, holds more than :data:`MAX_VALUES` values counting each use of
    a YAML alias, refers to itself, or holds an integer beyond 64 bits or a string longer
    than :data:`MAX_STRING`. Iterative: nothing here recurses."""
    count = 0
    stack: list[tuple[Any, int, tuple[int, ...], str]] = [(doc, 0, (), "")]
    while stack:
        node, depth, ancestors, path = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(f"{where} holds more than {MAX_VALUES:,} values once its YAML aliases are "
                              "expanded; a config needs far fewer (aliases that repeat aliases multiply).")
        at = f" at {path}" if path else ""
        if isinstance(node, bool) or node is None or isinstance(node, float):
            continue
        if isinstance(node, int):
            if abs(node) >= MAX_INT:
                raise ConfigError(f"{where} holds an integer of {len(str(abs(node)))} digits{at}; "
                                  "at most 64 bits.")
            continue
        if isinstance(node, str):
            if len(node) > MAX_STRING:
                raise ConfigError(f"{where} holds a string of {len(node):,} characters{at}; at most {MAX_STRING:,}.")
            continue
        if isinstance(node, (dict, list, tuple)):
            if id(node) in ancestors:
                raise ConfigError(f"{where} refers to itself{at} (a YAML anchor used inside itself).")
            if depth >= MAX_DEPTH:
                raise ConfigError(f"{where} nests deeper than {MAX_DEPTH} levels{at}.")
            inner = (*ancestors, id(node))
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for k, v in items:
                if isinstance(node, dict) and not isinstance(k, (str, int, float, bool, type(None))):
                    raise ConfigError(f"{where} has a key that is not a plain value{at}.")
                stack.append((v, depth + 1, inner, f"{path}.{k}" if path else str(k)))
            continue
        if not isinstance(node, (datetime.date, bytes, bytearray, set, frozenset)):
            continue  # a Python caller's own value (a numpy number, ...): pydantic judges it
        # dates, bytes and sets come from YAML tags; no config setting takes them
        raise ConfigError(f"{where} holds a {type(node).__name__} value{at}; a config holds numbers, "
                          "strings, booleans, lists and mappings.")


def _format_errors(err: ValidationError, model: type[BaseModel]) -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        where = ".".join(loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            valid = list(parent.model_fields) if parent else []
            hint = did_you_mean(loc[-1], valid)
            lines.append(f"unknown key {where!r}.{hint}" + (f" Valid keys here: {', '.join(valid)}." if valid else ""))
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {msg}")
    return "Invalid configuration:\n  " + "\n  ".join(lines)


def _model_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    cur: Any = model
    for part in loc:
        field = getattr(cur, "model_fields", {}).get(part)
        if field is None:
            return None
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                cur = cand
                break
        else:
            return None
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


def validate_config(raw: Any) -> RunConfig:
    """A :class:`RunConfig` (the class of the document's ``task``) from a parsed document,
    or a :class:`ConfigError`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"A config must be a mapping of sections, got {type(raw).__name__}.")
    check_structure(raw)
    cls = task_named(raw.get("task", DEFAULT_TASK)).config  # the task validates its own sections
    try:
        return cls.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, cls)) from None
    except (TypeError, ValueError, OverflowError, RecursionError) as e:
        raise ConfigError(f"Invalid configuration: {e}") from None


def read_config_file(path: str | Path) -> Any:
    """A config file's YAML document, read within the limits (:func:`parse_yaml`); every
    kind of config (image runs, causal-LM runs) is read through here."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Config file {str(p)!r} not found.")
    try:
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{p} is {p.stat().st_size:,} bytes; a config is at most {MAX_CONFIG_BYTES:,}.")
        text = p.read_text()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p} is not valid YAML (not UTF-8 text: {e}).") from None
    return parse_yaml(text, str(p)) or {}


def format_errors(err: ValidationError, model: type[BaseModel]) -> str:
    """A pydantic validation error as kdistill's one-paragraph message."""
    return _format_errors(err, model)


def read_raw_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                    base: dict | None = None) -> dict:
    """A config's document (from ``base``, or the file at ``path``) with ``overrides``
    applied, not yet validated; every kind of run config is read through here."""
    raw: Any = copy.deepcopy(base or {})  # overrides must not write into the caller's nested dicts
    if path is not None:
        raw = read_config_file(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"A config must be a mapping of sections, got {type(raw).__name__}.")
    for text in overrides:
        key, value = parse_override(text)
        _set(raw, key, value)
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), base: dict | None = None) -> RunConfig:
    """Read, override and validate a run config."""
    return validate_config(read_raw_config(path, overrides, base))


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def parse_ints(text: str, what: str) -> tuple[int, ...]:
    """``"1,28,28"`` -> ``(1, 28, 28)``: positive integers separated by commas (a sample's
    shape, channels first and without the batch dimension, or a list of batch sizes)."""
    try:
        values = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise ConfigError(
            f"{what} must be positive integers separated by commas, like 1,28,28 (a shape: channels first, "
            f"without the batch dimension; 1,40 for a sequence); got {text!r}."
        )
    return values


def run_task(run_dir: str | Path):
    """The :class:`kdistill.task.Task` of a run folder (its ``config.yaml``'s ``task``; the
    default task for folders written before tasks existed)."""
    f = Path(run_dir) / "config.yaml"
    if not f.is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml).")
    raw = read_config_file(f)
    return task_named(raw.get("task", DEFAULT_TASK) if isinstance(raw, dict) else DEFAULT_TASK)
