"""The model registry and :func:`create_model`.

A model name is one of:

* a zoo name (``mlp``, ``cnn1d``, ``convnet``, ``resnet8x4``, ...; ``kdistill list models``);
* ``timm:NAME`` or ``torchvision:NAME`` (optional extras; never downloads weights);
* ``package.module:factory`` for a user's own model; the factory is called with
  ``num_classes`` and ``input_shape`` when it accepts them.

Every zoo factory takes ``num_classes`` and ``input_shape`` (channels first, no batch
dimension) and returns a model with a ``default_taps`` dict: ``"stages"`` (tap specs of the
stage outputs, shallow to deep) and ``"embedding"`` (the pre-logit vector), so feature
methods work on zoo models without naming layers.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from .._registry import Registry
from ..errors import ConfigError

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
register_model = MODELS.register


def _call_factory(factory: Callable[..., nn.Module], num_classes: int, input_shape, **kwargs) -> nn.Module:
    params = inspect.signature(factory).parameters
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    if "num_classes" in params or accepts_any:
        kwargs.setdefault("num_classes", num_classes)
    if "input_shape" in params or accepts_any:
        kwargs.setdefault("input_shape", tuple(input_shape))
    return factory(**kwargs)


def create_model(name: str, num_classes: int, input_shape: tuple[int, ...], **kwargs: Any) -> nn.Module:
    """Build a model by name (see module docstring)."""
    if name.startswith("timm:"):
        try:
            import timm
        except ImportError:
            raise ConfigError(f"Model {name!r} needs timm: pip install timm.") from None
        return timm.create_model(
            name[5:], pretrained=False, num_classes=num_classes, in_chans=input_shape[0], **kwargs
        )
    if name.startswith("torchvision:"):
        try:
            import torchvision
        except ImportError:
            raise ConfigError(f"Model {name!r} needs torchvision: pip install torchvision.") from None
        return torchvision.models.get_model(name[12:], weights=None, num_classes=num_classes, **kwargs)
    if ":" in name:
        mod_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"Cannot import model factory {name!r}: {e}.") from None
        return _call_factory(factory, num_classes, input_shape, **kwargs)
    try:
        return _call_factory(MODELS.get(name), num_classes, input_shape, **kwargs)
    except TypeError as e:
        raise ConfigError(f"Model {name!r}: {e}.") from None


def default_taps(model: nn.Module) -> dict[str, Any]:
    """The model's declared tap points, or a guess for foreign models.

    For a model without ``default_taps``, the embedding is the input of its last
    ``nn.Linear`` and there are no stages (name layers in the config instead).
    """
    taps = getattr(model, "default_taps", None)
    if taps:
        return taps
    last_linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return {"stages": [], "embedding": f"{last_linear[-1]}:input" if last_linear else None}
