"""A small, strict name -> factory registry (the timm way, without silent overwrites)."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import ConfigError, KdistillError, did_you_mean

T = TypeVar("T")


class UnknownNameError(KdistillError, KeyError):
    """A name that no registry entry has."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to factories. A duplicate name raises; an unknown one lists the known."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if not key:
                raise ValueError(f"cannot register an unnamed {self.kind}")
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"Unknown {self.kind} {name!r}.{did_you_mean(name, self._items)} "
                f"Known {self.kind}s: {', '.join(sorted(self._items))}."
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)


def check_types(what: str, config: type, settings: dict[str, Any]) -> None:
    """Each of ``settings`` against its annotation in the dataclass ``config``, strictly
    (pydantic's strict mode: an int passes for a float, a string never passes for a number,
    a bool never for an int), so a wrong type fails when a config is loaded, naming the
    setting, not later inside a constructor. Values are checked, never converted; keys that
    ``config`` lacks are left to the caller."""
    from pydantic import TypeAdapter, ValidationError

    hints = typing.get_type_hints(config)
    for key, value in settings.items():
        if key not in hints:
            continue
        try:
            TypeAdapter(hints[key]).validate_python(value, strict=True)
        except ValidationError as e:
            want = getattr(hints[key], "__name__", None) or str(hints[key]).replace("typing.", "")
            raise ConfigError(
                f"{what}: setting {key!r} must be {want}, got {value!r} ({type(value).__name__}): "
                f"{e.errors()[0]['msg']}."
            ) from None


def check_settings(what: str, config: type, settings: dict[str, Any]) -> None:
    """Unknown keys (naming the closest valid one) and types (:func:`check_types`) of
    ``settings`` against the dataclass ``config``."""
    names = [f.name for f in dataclasses.fields(config)]
    for key in settings:
        if key not in names:
            raise ConfigError(
                f"{what} has no setting {key!r}.{did_you_mean(key, names)} Its settings: {', '.join(names) or 'none'}."
            )
    check_types(what, config, settings)
