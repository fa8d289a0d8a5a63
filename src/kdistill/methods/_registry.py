"""The method registry and :func:`create`, the one way to build a distiller."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from .._registry import Registry
from ..errors import ConfigError
from ..teachers import Teacher
from ._base import Distiller, Method

METHODS: Registry[type[Method]] = Registry("method")


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Register a :class:`Method` subclass under ``name``, which also becomes its ``name``
    (loss keys ``loss_<name>``, error messages): one spelling, written once. A class that
    spells a different ``name`` itself is refused."""
    if not isinstance(name, str) or not name:
        raise ValueError("register_method needs the method's name, e.g. @register_method('kd')")

    def deco(cls: type[Method]) -> type[Method]:
        declared = cls.__dict__.get("name")
        if declared and declared != name:
            raise ValueError(f"method class {cls.__name__} says name={declared!r} but is registered as {name!r}")
        cls.name = name
        return METHODS.register(name)(cls)

    return deco


def build_term(
    name: str,
    student: nn.Module,
    teacher: Teacher | nn.Module | None,
    example: Tensor | None = None,
    **kwargs: Any,
) -> tuple[float, Method]:
    """One ``(weight, Method)`` pair; ``weight`` defaults to the method's published default."""
    cls = METHODS.get(name)
    weight = kwargs.pop("weight", None)
    cfg = cls.make_config(**kwargs)
    from ._base import as_teacher

    t = as_teacher(teacher) if teacher is not None else None
    return (cls.default_weight if weight is None else float(weight)), cls(cfg, student, t, example)


def create(
    method: str | Sequence[Mapping[str, Any]],
    student: nn.Module,
    teacher: Teacher | nn.Module | None = None,
    *,
    example: Tensor | None = None,
    alpha: float | None = None,
    ce_weight: float | None = None,
    **kwargs: Any,
) -> Distiller:
    """Build a :class:`Distiller`.

    ``create("kd", student=s, teacher=t, temperature=4.0, alpha=0.9)`` gives
    ``0.9 * KD + 0.1 * CE``. A single method name gets a hard-label CE term of weight
    ``ce_weight`` (default ``1 - alpha`` when ``alpha`` is given, else the method's own
    default: 0.1 for ``kd``, 1.0 for feature methods, as in the CRD benchmark). A list of
    ``{"name": ..., "weight": ..., **settings}`` mappings is used as written (add
    ``{"name": "ce"}`` for the hard-label term).

    Args:
        example: one input batch, needed by methods that size connectors by a probe pass.
    """
    if isinstance(method, str):
        cls = METHODS.get(method)
        if alpha is not None:
            if not 0.0 <= alpha <= 1.0:
                raise ConfigError(f"alpha must lie in [0, 1], got {alpha}.")
            kwargs.setdefault("weight", alpha)
            ce_weight = 1.0 - alpha if ce_weight is None else ce_weight
        terms = [build_term(method, student, teacher, example, **kwargs)]
        if method != "ce":
            ce_w = cls.default_ce_weight if ce_weight is None else ce_weight
            terms.append(build_term("ce", student, teacher, example, weight=ce_w))
        return Distiller(student, teacher, terms)
    if alpha is not None or ce_weight is not None or kwargs:
        raise ConfigError("With a list of terms, put every weight and setting inside its term.")
    terms = []
    for spec in method:
        spec = dict(spec)
        if "name" not in spec:
            raise ConfigError(f"Every method term needs a 'name'; got {spec}.")
        terms.append(build_term(spec.pop("name"), student, teacher, example, **spec))
    names = [m.name for _, m in terms]
    if len(set(names)) != len(names):
        raise ConfigError(f"A method term appears twice in {names}; merge them into one with its weight.")
    return Distiller(student, teacher, terms)
