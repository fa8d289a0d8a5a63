"""The scheme registry and :func:`run_scheme`, the one entry point of multi-step training.

A *scheme* trains more than one network for one result: a chain of teachers (TAKD), a
line of generations (born-again networks), peers trained together (DML, ONE), a network
with early exits (BYOT), specialists beside a generalist, or a student on a transfer set.
Each is a class registered here with a typed ``Config`` (pydantic, unknown keys refused
with the closest valid one) and a ``run(ctx, settings)`` that writes one run folder: a
subfolder per step or model (each a normal run folder with ``results.json``) and a
top-level ``results.json`` that reports every step (under the key ``stages``, kept for
existing run folders).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .._registry import Registry
from ..config import ModelConfig, RunConfig
from ..errors import ConfigError, did_you_mean
from ..runs import open_run_dir, preflight, write_json
from ._common import SchemeContext


class SchemeConfig(BaseModel):
    """Base of every scheme's settings: strict (an unknown key is an error)."""

    model_config = ConfigDict(extra="forbid")


class Scheme(ABC):
    """A registered scheme: ``name``, a ``Config`` and :meth:`run`."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[SchemeConfig]] = SchemeConfig

    @abstractmethod
    def run(self, ctx: SchemeContext, settings: Any) -> dict[str, Any]:
        """Run every step and return the top-level results."""


SCHEMES: Registry[type[Scheme]] = Registry("scheme")


def register_scheme(name: str) -> Callable[[type[Scheme]], type[Scheme]]:
    def deco(cls: type[Scheme]) -> type[Scheme]:
        cls.name = name
        return SCHEMES.register(name)(cls)

    return deco


def parse_settings(name: str, raw: dict[str, Any]) -> Any:
    """The scheme's typed settings from the ``scheme`` section (``name`` removed), or a
    :class:`ConfigError` naming the bad key and the closest valid one."""
    cls = SCHEMES.get(name)
    try:
        return cls.Config.model_validate(raw)
    except ValidationError as e:
        valid = list(cls.Config.model_fields)
        lines = []
        errors = e.errors()
        # a model given as a mapping also fails the "zoo name" branch of its union: say the useful half
        locs = [[str(p) for p in x["loc"]] for x in errors]
        mapped = {tuple(loc[: loc.index("ModelConfig")]) for loc in locs if "ModelConfig" in loc}
        for err in errors:
            loc = [str(p) for p in err["loc"]]
            if loc[-1] == "str" and tuple(loc[:-1]) in mapped:
                continue
            if loc[-1] == "ModelConfig":
                where = ".".join(["scheme", *loc[:-1]])
                lines.append(f"{where}: a model is a zoo name or a mapping {{model, kwargs, checkpoint}}, "
                             f"got {err['input']!r}.")
                continue
            if err["type"] == "extra_forbidden" and len(loc) == 1:
                lines.append(
                    f"scheme {name!r} has no setting {loc[0]!r}.{did_you_mean(loc[0], valid)} "
                    f"Its settings: {', '.join(valid)}."
                )
            elif err["type"] == "extra_forbidden" and loc[-2:-1] == ["ModelConfig"]:
                keys = list(ModelConfig.model_fields)
                where = ".".join(["scheme", *loc[:-2]])
                lines.append(f"{where}: a model has no key {loc[-1]!r}.{did_you_mean(loc[-1], keys)} "
                             f"Its keys: {', '.join(keys)}.")
            else:
                where = ".".join(["scheme", *loc])
                lines.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("Invalid scheme settings:\n  " + "\n  ".join(lines)) from None


def scheme_models(settings: BaseModel) -> list[tuple[str, ModelConfig]]:
    """Every model a scheme's settings name (fields typed with :class:`ModelConfig`, given
    as a zoo name or a mapping), labelled ``scheme.<field>[i]``, for the preflight check."""
    out: list[tuple[str, ModelConfig]] = []
    for key, info in type(settings).model_fields.items():
        if "ModelConfig" not in str(info.annotation):
            continue
        value = getattr(settings, key)
        values = value if isinstance(value, list) else [value]
        for i, v in enumerate(values):
            if v is None:
                continue
            label = f"scheme.{key}" + (f"[{i}]" if isinstance(value, list) else "")
            out.append((label, ModelConfig(model=v) if isinstance(v, str) else v))
    return out


def scheme_settings(cfg: RunConfig) -> tuple[str, Any]:
    """The scheme's name and typed settings from ``cfg.scheme``, or a :class:`ConfigError`."""
    raw = dict(cfg.scheme or {})
    if "name" not in raw:
        raise ConfigError(f"The scheme section needs a 'name'; known schemes: {', '.join(SCHEMES.names())}.")
    name = raw.pop("name")
    if name not in SCHEMES:
        raise ConfigError(
            f"Unknown scheme {name!r}.{did_you_mean(str(name), SCHEMES.names())} "
            f"Known schemes: {', '.join(SCHEMES.names())}."
        )
    settings = parse_settings(name, raw)
    return name, settings


def check_run(cfg: RunConfig, trust: bool = False, log: Callable[[str], None] | None = None):
    """``kdistill train --check``: the preflight check of a plain run, or of a scheme (its
    typed settings and every model it names), training nothing."""
    if not cfg.scheme:
        return preflight(cfg, trust, log)
    _, settings = scheme_settings(cfg)
    return preflight(cfg, trust, log, extra_models=scheme_models(settings), scheme=True)


def run_scheme(
    cfg: RunConfig,
    run_dir: str | Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
    trust: bool = False,
) -> dict[str, Any]:
    """Run the scheme named in ``cfg.scheme["name"]`` and return its top-level results.

    Args:
        cfg: the run's config; ``cfg.scheme`` holds ``name`` and the scheme's settings.
        run_dir: the run folder (default ``output.dir/output.name``).
        resume: reuse finished steps and continue an unfinished one from its checkpoint.
        log: prints one line.
        trust: allow checkpoints that need pickle.
    """
    name, settings = scheme_settings(cfg)
    preflight(cfg, trust, log, extra_models=scheme_models(settings), scheme=True)
    run_dir = open_run_dir(cfg, run_dir, resume, name)
    ctx = SchemeContext(cfg, run_dir, resume, log, trust)
    result = SCHEMES.get(name)().run(ctx, settings)
    result = {"name": run_dir.name, "scheme": name, "settings": settings.model_dump(mode="json"), **result}
    write_json(run_dir / "results.json", result)
    for stage, row in result.get("stages", {}).items():
        acc = next((row[k] for k in ("test_acc", "combined_acc", "test_acc_remapped") if k in row), None)
        log(f"{name} {stage}: test acc {acc:.4f}" if isinstance(acc, float) else f"{name} {stage}: {row}")
    return result | {"run_dir": str(run_dir)}
