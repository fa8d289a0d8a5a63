"""The model registry and :func:`create_model`.

A model name is one of:

* a zoo name (``mlp``, ``cnn1d``, ``convnet``, ``resnet8x4``, ...; ``kdistill list models``);
* ``timm:NAME`` or ``torchvision:NAME`` (optional extras; never downloads weights: give
  pretrained weights as a local ``checkpoint``). A timm model declares its taps from its own
  ``feature_info`` (:func:`timm_taps`); ``kwargs: {distillation_token: true}`` gives a plain
  timm ViT DeiT's distillation token and second head (:mod:`.vit_token`);
* ``hf:PATH`` for a Hugging Face image classifier saved in a local folder
  (``save_pretrained``; loaded with ``local_files_only=True``, never from the hub), with its
  own pretrained weights; the model gives ``(batch, classes)`` logits;
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
from ..errors import ConfigError, UntrustedCodeError, did_you_mean
from ..safe_read import refuse_pickled_weights, remote_code_allowed

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
register_model = MODELS.register


# keyword arguments of timm / torchvision / transformers loaders that read files (a pickle
# through torch.load), fetch weights or run a model folder's own Python (trust_remote_code):
# refused, like an importable factory, from an untrusted record
_LOADING_KWARGS = ("checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                   "weights", "weights_backbone", "pretrained_strict", "cache_dir",
                   "trust_remote_code", "code_revision")
# names built by a foreign zoo's own registry (no import of the user's choosing)
_FOREIGN = ("timm:", "torchvision:", "hf:")

TrustCode = bool | Collection[str]


def runs_code(name: str, kwargs: dict[str, Any] | None = None) -> bool:
    """Whether building ``name`` with ``kwargs`` would import and call code from outside the
    zoo (a ``package.module:factory``) or let a foreign factory read files."""
    if name.startswith(_FOREIGN):
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
    factory = not name.startswith(_FOREIGN)
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


def check_name(name: str) -> None:
    """Fail fast on a model name that cannot be built, before any data is loaded: an
    unknown zoo name, a ``package.module:factory`` that does not import, an ``hf:`` folder
    that does not exist. Builds nothing."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"A model name must be a non-empty string, got {name!r}.")
    if name.startswith(("timm:", "torchvision:")):
        return
    if name.startswith("hf:"):
        _hf_folder(name)
        return
    if ":" in name:
        _factory(name)
        return
    MODELS.get(name)


def _factory(name: str) -> Callable[..., nn.Module]:
    mod_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(
            f"Cannot import model factory {name!r}: {e}. The current folder and PYTHONPATH are searched; "
            f"run from the folder that holds {mod_name.split('.')[0]!r}, or add its parent to PYTHONPATH."
        ) from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise ConfigError(f"Module {mod_name!r} has no model factory {attr!r}.{did_you_mean(attr, names)}")
    return factory


def _hf_folder(name: str):
    from pathlib import Path

    folder = Path(name[3:]).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"Model {name!r}: {str(folder)!r} is not a saved Hugging Face model (no config.json there). "
            "Give a local folder written by save_pretrained(); models are never downloaded."
        )
    return folder


class HFClassifier(nn.Module):
    """A Hugging Face image classifier as a plain ``x -> logits`` network.

    ``self.model`` is the ``AutoModelForImageClassification``; taps name its modules
    (``model.<path>``) and state-dict keys carry the ``model.`` prefix.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.default_taps = {"stages": [], "embedding": None}

    def forward(self, x):
        return self.model(pixel_values=x).logits


def _hf_model(name: str, num_classes: int, new_head: bool = False, **kwargs: Any) -> nn.Module:
    """``hf:PATH``: ``AutoModelForImageClassification.from_pretrained(PATH,
    local_files_only=True)``. With ``new_head: true`` the classifier is replaced by a fresh
    one for ``num_classes`` (to fine-tune with ``teacher.train``); otherwise a head of another
    class count is refused by the probe check."""
    folder = _hf_folder(name)
    try:
        from transformers import AutoModelForImageClassification
    except ImportError:
        raise ConfigError(f"Model {name!r} needs transformers: pip install 'kdistill[hf]'.") from None
    try:  # transformers' load report and progress bars would bury kdistill's own lines
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except (ImportError, AttributeError):
        pass
    extra = ({"num_labels": num_classes, "ignore_mismatched_sizes": True,
              "id2label": {i: str(i) for i in range(num_classes)}, "label2id": {str(i): i for i in range(num_classes)}}
             if new_head else {})
    refuse_pickled_weights(folder, ConfigError)
    try:  # never the folder's own Python unless --trust-code, and never a [y/N] prompt on stdin
        model = AutoModelForImageClassification.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=remote_code_allowed(), **extra, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"Model {name!r}: transformers cannot load {folder}: {str(e).splitlines()[0]}") from None
    return HFClassifier(model)


def create_model(name: str, num_classes: int, input_shape: tuple[int, ...], trust_code: TrustCode = True,
                 **kwargs: Any) -> nn.Module:
    """Build a model by name (see module docstring).

    ``trust_code``: the caller's own name runs as given (the default); pass ``False`` for a
    name read from a file, and an importable factory is refused (:func:`require_trusted`).
    """
    require_trusted(name, kwargs, trust_code, f"The model name {name!r}")
    if name.startswith("hf:"):
        return _hf_model(name, num_classes, **kwargs)
    if name.startswith("timm:"):
        # built without weights; pretrained weights come from a local file (the run's
        # ``checkpoint``), loaded with prefix mapping like any other checkpoint
        try:
            import timm
        except ImportError:
            raise ConfigError(f"Model {name!r} needs timm: pip install 'kdistill[timm]'.") from None
        token = kwargs.pop("distillation_token", False)  # DeiT's token on a plain ViT (models/vit_token.py)
        try:
            model = timm.create_model(
                name[5:], pretrained=False, num_classes=num_classes, in_chans=input_shape[0], **kwargs
            )
        except (RuntimeError, ValueError, TypeError, KeyError) as e:
            raise ConfigError(f"Model {name!r}: timm cannot build it: {str(e).splitlines()[0]}") from None
        taps = timm_taps(model)
        if token:
            from .vit_token import DistillationToken

            model = DistillationToken(model)
        model.default_taps = taps
        return model
    if name.startswith("torchvision:"):
        try:
            import torchvision
        except ImportError:
            raise ConfigError(f"Model {name!r} needs torchvision: pip install torchvision.") from None
        except Exception as e:  # a torchvision build that does not match torch fails on import
            raise ConfigError(f"Model {name!r}: torchvision does not import here ({type(e).__name__}: {e}).") from None
        try:
            model = torchvision.models.get_model(name[12:], weights=None, num_classes=num_classes, **kwargs)
        except (RuntimeError, ValueError, TypeError, KeyError) as e:
            raise ConfigError(f"Model {name!r}: torchvision cannot build it: {str(e).splitlines()[0]}") from None
        groups = [f"layer{i}" for i in range(1, 5) if hasattr(model, f"layer{i}")]
        if len(groups) == 4:  # the ResNet family's residual groups are its stages
            model.default_taps = {"stages": groups, "embedding": default_taps(model)["embedding"]}
        return model
    if ":" in name:
        factory = _factory(name)
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


def timm_taps(model: nn.Module) -> dict[str, Any]:
    """A timm model's declared taps from what timm knows about it, not from probing: the
    stages are its ``feature_info`` modules (shallow to deep, with their ``channels`` and
    ``reduction`` kept under ``"feature_info"``), the embedding is the input of the
    classifier its ``pretrained_cfg`` names (``fc``, ``classifier``, ``head``; the first of
    a distilled model's two heads)."""
    info = [f for f in (getattr(model, "feature_info", None) or []) if isinstance(f, dict) and f.get("module")]
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    head = head[0] if isinstance(head, (list, tuple)) and head else head
    try:
        embedding = f"{head}:input" if isinstance(head, str) and model.get_submodule(head) is not None else None
    except AttributeError:
        embedding = None
    if embedding is None:
        last_linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        embedding = f"{last_linear[-1]}:input" if last_linear else None
    return {"stages": [str(f["module"]) for f in info], "embedding": embedding,
            "feature_info": [{"tap": str(f["module"]), "channels": int(f["num_chs"]), "reduction": int(f["reduction"])}
                             for f in info]}


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
