"""The model registry and :func:`create_model`.

A model name is one of:

* a zoo name (``mlp``, ``cnn1d``, ``convnet``, ``resnet8x4``, ...; ``kdistill list models``);
* ``timm:NAME`` or ``torchvision:NAME`` (optional extras; never downloads weights);
* ``package.module:factory`` for a user's own model; the factory is called with
  ``num_classes`` and ``input_shape`` when it accepts them.

Only the last kind runs code from outside kdistill. A name the user wrote (in Python, on the
command line, in the config they pass) is theirs to run; a name read from a file someone
else may have written (a run folder's ``model.json``, a teacher folder, a run folder's
``config.yaml``) is refused by :func:`require_trusted` unless the user opted in
(``--trust-code``, ``trust_code=True``), the way Hugging Face's ``trust_remote_code`` does.

Every zoo factory takes ``num_classes`` and ``input_shape`` (channels first, no batch
dimension) and returns a model with a ``default_taps`` dict: ``"stages"`` (tap specs of the
stage outputs, shallow to deep) and ``"embedding"`` (the pre-logit vector), so feature
methods work on zoo models without naming layers.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Collection
from typing import Any

from torch import nn

from .._registry import Registry
from ..errors import ConfigError, UntrustedCodeError

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
register_model = MODELS.register


# keyword arguments of timm / torchvision factories that read files (a pickle through
# torch.load) or fetch weights: refused, like an importable factory, from an untrusted record
_LOADING_KWARGS = ("checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                   "weights", "weights_backbone", "pretrained_strict", "cache_dir")

TrustCode = bool | Collection[str]


def runs_code(name: str, kwargs: dict[str, Any] | None = None) -> bool:
    """Whether building ``name`` with ``kwargs`` would import and call code from outside the
    zoo (a ``package.module:factory``) or let a foreign factory read files."""
    if name.startswith(("timm:", "torchvision:")):
        return any(k in _LOADING_KWARGS for k in (kwargs or {}))
    return ":" in name


def require_trusted(name: str, kwargs: dict[str, Any] | None, trust_code: TrustCode, source: str) -> None:
    """The one check before a model name read from a file is built.

    Args:
        name: the model name the file gives.
        kwargs: the factory arguments the file gives.
        trust_code: ``True`` (the user opted in), ``False``, or the names the user named
            themselves (a config they passed), which are theirs to run wherever they reappear.
        source: the file, for the message.

    Raises:
        UntrustedCodeError: ``name`` runs code and the user did not opt in.
    """
    if trust_code is True or not runs_code(name, kwargs):
        return
    factory = not name.startswith(("timm:", "torchvision:"))
    if factory and not isinstance(trust_code, bool) and name in trust_code:
        return
    if factory:
        what = f"names the model factory {name!r}: building it would import and call that code"
    else:
        keys = ", ".join(k for k in (kwargs or {}) if k in _LOADING_KWARGS)
        what = f"gives {name!r} the arguments {keys}, which make it read files or fetch weights"
    raise UntrustedCodeError(
        f"{source} {what}. Nothing was run. If you trust where this file came from, pass --trust-code "
        "(in Python: trust_code=True); zoo models (`kdistill list models`) need no flag."
    )


def _call_factory(factory: Callable[..., nn.Module], num_classes: int, input_shape, **kwargs) -> nn.Module:
    params = inspect.signature(factory).parameters
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    if "num_classes" in params or accepts_any:
        kwargs.setdefault("num_classes", num_classes)
    if "input_shape" in params or accepts_any:
        kwargs.setdefault("input_shape", tuple(input_shape))
    return factory(**kwargs)


def create_model(name: str, num_classes: int, input_shape: tuple[int, ...], trust_code: TrustCode = True,
                 **kwargs: Any) -> nn.Module:
    """Build a model by name (see module docstring).

    ``trust_code``: the caller's own name runs as given (the default); pass ``False`` for a
    name read from a file, and an importable factory is refused (:func:`require_trusted`).
    """
    require_trusted(name, kwargs, trust_code, f"The model name {name!r}")
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
        try:
            model = _call_factory(factory, num_classes, input_shape, **kwargs)
        except TypeError as e:
            raise ConfigError(f"Model factory {name!r}: {e}.") from None
        if not isinstance(model, nn.Module):
            raise ConfigError(f"Model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module.")
        return model
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
