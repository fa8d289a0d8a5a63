"""The configuration of a run: YAML validated by pydantic, with clear errors.

``load_config(path, overrides)`` reads a YAML file, applies ``--set section.key=value``
overrides (values parsed as YAML), and validates everything before anything runs: an
unknown key names the closest valid one, a wrong type names the key and what it needs,
and method settings are checked against the method's own typed config.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError, KdistillError, did_you_mean

PosInt = Annotated[int, Field(ge=1, le=10**9)]
NonNegFloat = Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


class ModelConfig(Strict):
    model: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None


class TrainConfig(Strict):
    epochs: Annotated[int, Field(ge=0, le=100000)] = 10
    optimizer: Literal["sgd", "adamw", "adam"] = "adamw"
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
    seed: int = 0
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


class TeacherConfig(Strict):
    """A teacher: one model, an ensemble of models, or cached outputs.

    A model without ``checkpoint`` is trained first, in the same run, with ``train``
    overriding the run's train section and ``augment`` (if given) replacing the data
    section's augmentation.
    """

    model: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None
    ensemble: list[ModelConfig] = Field(default_factory=list)
    combine: Literal["mean_prob", "mean_logit", "geometric"] = "mean_prob"
    cache: str | None = None
    train: dict[str, Any] = Field(default_factory=dict)
    augment: AugmentConfig | None = None
    #: the teacher's input normalisation/resolution/channels, converted per batch on the device
    input: TeacherInputConfig | None = None

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [self.model is not None, bool(self.ensemble), self.cache is not None]
        if sum(kinds) == 0:
            raise ValueError("give the teacher a 'model', an 'ensemble' list or a 'cache' path")
        if self.model is not None and self.ensemble:
            raise ValueError("give either 'model' or 'ensemble', not both")
        TrainConfig(**self.train)
        return self


class OutputConfig(Strict):
    dir: str = "runs"
    name: str | None = None


class RunConfig(Strict):
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

    def teacher_train(self) -> TrainConfig:
        """The teacher's train settings: the run's, overridden by ``teacher.train``."""
        base = self.train.model_dump()
        base.update(self.teacher.train if self.teacher else {})
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
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


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
    """A :class:`RunConfig` from a parsed document, or a :class:`ConfigError`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"A config must be a mapping of sections, got {type(raw).__name__}.")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, RunConfig)) from None
    except (TypeError, ValueError, OverflowError, RecursionError) as e:
        raise ConfigError(f"Invalid configuration: {e}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), base: dict | None = None) -> RunConfig:
    """Read, override and validate a run config."""
    raw: Any = dict(base or {})
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"Config file {str(p)!r} not found.")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"A config must be a mapping of sections, got {type(raw).__name__}.")
    for text in overrides:
        key, value = parse_override(text)
        _set(raw, key, value)
    return validate_config(raw)


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
