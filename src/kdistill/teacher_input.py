"""A teacher's own input format: normalisation, resolution and channels, converted per batch.

A teacher pretrained elsewhere expects its own input: ImageNet's mean and std, 224 pixels,
three channels. The student's batches arrive in the data's format. :class:`TeacherInput`
wraps the teacher's network so that it takes the student's batches and converts them on
their device, inside the forward pass: undo the data's normalisation
(``x * data_std + data_mean``), repeat a single channel to ``channels``, resize to ``size``
(bilinear, antialiased), and normalise with the teacher's ``mean`` and ``std``. timm's
distillation task does the same conversion between a student's and a teacher's
normalisation (timm ``task/distillation.py``, ``DistillationTeacher``); kdistill adds the
resolution and channel steps.

Taps still name the teacher's own modules (``layer3``, not ``net.layer3``): the wrapper
declares ``tap_root = "net"``, which :func:`kdistill.taps.resolve` honours, and the
teacher's declared taps are kept.

``teacher.input: auto`` reads the format from the model's own card instead of the config
(:func:`card_spec`): a timm model's ``pretrained_cfg`` (mean, std, input size,
interpolation, ``crop_pct``), the JSON sidecar of its weights file, or an ``hf:`` folder's
``preprocessor_config.json``. Only JSON is read; no code runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError


def _vec(values: Sequence[float] | float | None, what: str) -> tuple[float, ...] | None:
    if values is None:
        return None
    vals = (float(values),) if isinstance(values, (int, float)) else tuple(float(v) for v in values)
    if not vals:
        raise ConfigError(f"teacher.input.{what} is empty; give one number per channel (or one for all).")
    if what in ("std", "data_std") and any(v <= 0 for v in vals):
        raise ConfigError(f"teacher.input.{what} must be positive, got {list(vals)}.")
    return vals


@dataclass(frozen=True)
class InputSpec:
    """How a teacher's input differs from the data's (``None``: the same as the data's).

    Attributes:
        mean, std: the teacher's normalisation, per channel (or one value for all).
        size: the teacher's input resolution ``(H, W)`` (an int for square inputs).
        channels: the teacher's input channels (a one-channel input is repeated).
        data_mean, data_std: the normalisation the data already has (default 0 and 1: raw
            values in [0, 1]); undone first.
        interpolation: how ``size`` is reached (``bilinear`` or ``bicubic``, antialiased,
            or ``nearest``).
        crop_pct: the central fraction the teacher saw at evaluation (timm's ``crop_pct``):
            the shorter side is resized to ``floor(size / crop_pct)``, then the centre
            ``size`` is cut out. ``None``: resized to ``size`` directly.
        source: where the format came from (``teacher.input: auto``), for the record.
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    size: tuple[int, int] | None = None
    channels: int | None = None
    data_mean: tuple[float, ...] = (0.0,)
    data_std: tuple[float, ...] = (1.0,)
    interpolation: str = "bilinear"
    crop_pct: float | None = None
    source: str | None = None

    @classmethod
    def make(cls, mean=None, std=None, size=None, channels=None, data_mean=(0.0,), data_std=(1.0,),
             interpolation=None, crop_pct=None, source=None) -> InputSpec:
        if size is not None:
            size = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(v) for v in size)
            if len(size) != 2 or min(size) < 1:
                raise ConfigError(f"teacher.input.size must be an int or [height, width], got {list(size)}.")
        if channels is not None and int(channels) < 1:
            raise ConfigError(f"teacher.input.channels must be positive, got {channels}.")
        interpolation = interpolation or "bilinear"
        if interpolation not in _MODES:
            raise ConfigError(f"teacher.input.interpolation must be one of {', '.join(_MODES)}, got {interpolation!r}.")
        if crop_pct is not None and not 0 < float(crop_pct) <= 1:
            raise ConfigError(f"teacher.input.crop_pct must lie in (0, 1], got {crop_pct}.")
        return cls(_vec(mean, "mean"), _vec(std, "std"), size, None if channels is None else int(channels),
                   _vec(data_mean, "data_mean") or (0.0,), _vec(data_std, "data_std") or (1.0,), interpolation,
                   None if crop_pct is None else float(crop_pct), source)

    def as_dict(self) -> dict:
        return {"mean": list(self.mean) if self.mean else None, "std": list(self.std) if self.std else None,
                "size": list(self.size) if self.size else None, "channels": self.channels,
                "data_mean": list(self.data_mean), "data_std": list(self.data_std),
                "interpolation": self.interpolation, "crop_pct": self.crop_pct, "source": self.source}

    def describe(self) -> str:
        """One line: what the conversion does (logged when a run starts)."""
        parts = [f"mean {_fmt(self.mean)}", f"std {_fmt(self.std)}"]
        if self.size:
            crop = f", centre crop of {self.crop_pct:g}" if self.crop_pct else ""
            parts.append(f"size {self.size[0]}x{self.size[1]} ({self.interpolation}{crop})")
        if self.channels:
            parts.append(f"{self.channels} channels")
        return ", ".join(parts) + (f"; from {self.source}" if self.source else "")


def _fmt(values: tuple[float, ...] | None) -> str:
    return "as the data" if values is None else "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


_MODES = ("bilinear", "bicubic", "nearest")


def _per_channel(values: tuple[float, ...], x: Tensor) -> Tensor:
    t = torch.tensor(values, dtype=x.dtype, device=x.device)
    if x.dim() < 2 or t.numel() not in (1, x.shape[1]):
        raise ConfigError(f"teacher.input gives {t.numel()} values per channel, but the inputs have "
                          f"{x.shape[1] if x.dim() > 1 else 1} channels.")
    return t.reshape(1, -1, *([1] * (x.dim() - 2)))


def convert(x: Tensor, spec: InputSpec) -> Tensor:
    """Data-format inputs ``x`` (N, C, ...) -> the teacher's format (see module docstring)."""
    x = x.float()
    x = x * _per_channel(spec.data_std, x) + _per_channel(spec.data_mean, x)
    if spec.channels is not None and spec.channels != x.shape[1]:
        if x.shape[1] != 1:
            raise ConfigError(f"teacher.input.channels is {spec.channels} but the inputs have {x.shape[1]} channels; "
                              "only a one-channel input can be repeated.")
        x = x.expand(-1, spec.channels, *x.shape[2:])
    if spec.size is not None and (tuple(x.shape[-2:]) != spec.size or spec.crop_pct not in (None, 1.0)):
        if x.dim() != 4:
            raise ConfigError("teacher.input.size resizes images (N, C, H, W); these inputs are not images.")
        x = _resize_crop(x, spec)
    if spec.mean is not None:
        x = x - _per_channel(spec.mean, x)
    if spec.std is not None:
        x = x / _per_channel(spec.std, x)
    return x.contiguous()


def _resize(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)


def _resize_crop(x: Tensor, spec: InputSpec) -> Tensor:
    """To ``spec.size``: directly, or (``crop_pct``) timm's evaluation transform: the shorter
    side to ``floor(size / crop_pct)`` keeping the aspect ratio, then the centre ``size``
    (offsets rounded as torchvision's ``CenterCrop``)."""
    th, tw = spec.size
    if spec.crop_pct is None:
        return _resize(x, (th, tw), spec.interpolation)
    h, w = x.shape[-2:]
    if th == tw:
        short = math.floor(th / spec.crop_pct)
        scale = short / min(h, w)
        new = (short, max(short, round(w * scale))) if h <= w else (max(short, round(h * scale)), short)
    else:
        new = (math.floor(th / spec.crop_pct), math.floor(tw / spec.crop_pct))
    x = _resize(x, new, spec.interpolation)
    top, left = int(round((new[0] - th) / 2.0)), int(round((new[1] - tw) / 2.0))
    return x[..., top:top + th, left:left + tw]


class TeacherInput(nn.Module):
    """``net`` taking data-format inputs: ``forward(x) = net(convert(x, spec))``.

    Holds no tensors of its own: ``state_dict()`` is the network's under ``net.``, and the
    network alone is what a run folder saves (with the spec in ``model.json``).
    """

    tap_root = "net"

    def __init__(self, net: nn.Module, spec: InputSpec):
        super().__init__()
        self.net = net
        self.spec = spec
        taps = getattr(net, "default_taps", None)
        if taps:
            self.default_taps = taps

    def forward(self, x: Tensor) -> Tensor:
        return self.net(convert(x, self.spec))


class Adapter:
    """Builds :class:`TeacherInput` wrappers for one spec, and says what input shape the
    teacher's network itself takes (what it must be built for)."""

    def __init__(self, spec: InputSpec):
        self.spec = spec

    def __call__(self, net: nn.Module) -> TeacherInput:
        return TeacherInput(net, self.spec)

    def input_shape(self, data_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The teacher network's per-sample input shape for data of ``data_shape``."""
        shape = list(data_shape)
        if self.spec.channels is not None:
            shape[0] = self.spec.channels
        if self.spec.size is not None and len(shape) == 3:
            shape[1:] = self.spec.size
        return tuple(shape)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a :class:`TeacherInput` (or ``model`` itself)."""
    return model.net if isinstance(model, TeacherInput) else model


# -- the model's own card (teacher.input: auto) --------------------------------------------
#: PIL resample codes in a processor config -> the closest conversion here (Lanczos ->
#: bicubic, box and Hamming -> bilinear)
_PIL_RESAMPLE = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bilinear"}


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"teacher.input: auto: {path} is not a JSON object: {e}") from None
    return data if isinstance(data, dict) else None


def _from_timm_cfg(cfg: dict, source: str) -> dict[str, Any]:
    """A timm ``pretrained_cfg`` (dict) -> :meth:`InputSpec.make` arguments."""
    shape = cfg.get("input_size") or (3, 224, 224)
    mode = cfg.get("interpolation") or "bilinear"
    return {"mean": list(cfg.get("mean") or (0.485, 0.456, 0.406)), "std": list(cfg.get("std") or (0.229, 0.224, 0.225)),
            "size": [int(shape[-2]), int(shape[-1])], "channels": int(shape[0]) if len(shape) == 3 else None,
            "interpolation": mode if mode in _MODES else "bilinear", "crop_pct": cfg.get("crop_pct"), "source": source}


def _sidecar(checkpoint: str | None) -> tuple[dict, Path] | None:
    """The pretrained_cfg beside a weights file: ``NAME.json`` next to ``NAME.safetensors``,
    or a ``config.json`` in its folder (timm's hub layout: ``{"pretrained_cfg": {...}}``)."""
    if not checkpoint:
        return None
    weights = Path(checkpoint).expanduser()
    for path in (weights.with_suffix(".json"), weights.parent / "config.json"):
        if path.is_file() and path != weights:
            data = _read_json(path) or {}
            cfg = data.get("pretrained_cfg", data)
            if isinstance(cfg, dict) and ({"mean", "std", "input_size"} & set(cfg)):
                return cfg, path
    return None


def _timm_card(name: str) -> dict[str, Any]:
    try:
        import timm
    except ImportError:
        raise ConfigError(f"teacher.input: auto reads {name!r}'s pretrained_cfg from timm, which does not import "
                          "here; pip install timm, or give teacher.input explicitly.") from None
    cfg = timm.get_pretrained_cfg(name[5:])
    if cfg is None:
        raise ConfigError(f"teacher.input: auto: timm has no pretrained_cfg for {name!r}; give teacher.input "
                          "explicitly, or a JSON sidecar beside the weights file.")
    return _from_timm_cfg(cfg.to_dict(), f"timm pretrained_cfg of {name[5:]}")


def _hf_card(name: str) -> dict[str, Any]:
    folder = Path(name[3:]).expanduser()
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        raise ConfigError(f"teacher.input: auto: {folder} has no preprocessor_config.json; give teacher.input "
                          "explicitly.")
    p = _read_json(path) or {}
    size, crop = p.get("size"), None
    if isinstance(size, dict) and "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        cs = p.get("crop_size")
        if p.get("do_center_crop") and cs:
            size = [int(cs["height"]), int(cs["width"])] if isinstance(cs, dict) else [int(cs)] * 2
            crop = min(size) / edge
        else:
            size, crop = [edge, edge], p.get("crop_pct") if edge < 384 else None  # ConvNeXt's rule
    elif isinstance(size, dict):
        size = [int(size["height"]), int(size["width"])]
    elif size is not None:
        size = [int(size)] * 2
    model_cfg = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    norm = p.get("do_normalize", True)
    return {"mean": p.get("image_mean") if norm else None, "std": p.get("image_std") if norm else None,
            "size": size, "channels": int((model_cfg or {}).get("num_channels", 3)),
            "interpolation": _PIL_RESAMPLE.get(p.get("resample"), "bilinear"), "crop_pct": crop,
            "source": str(path)}


def card_spec(model: str, checkpoint: str | None = None, kwargs: dict | None = None) -> dict[str, Any]:
    """:meth:`InputSpec.make` arguments from the teacher's own card (``teacher.input: auto``).

    In order: the weights file's JSON sidecar (the card of the weights actually loaded), an
    ``hf:`` folder's ``preprocessor_config.json``, timm's ``pretrained_cfg`` for the model
    name. A timm ``img_size`` in the model's ``kwargs`` wins over the card's size (the
    network is built for it).

    Raises:
        ConfigError: no card is found (a zoo model without a sidecar).
    """
    side = _sidecar(checkpoint)
    if side is not None:
        spec = _from_timm_cfg(side[0], str(side[1]))
    elif model.startswith("hf:"):
        spec = _hf_card(model)
    elif model.startswith("timm:"):
        spec = _timm_card(model)
    else:
        raise ConfigError(f"teacher.input: auto reads the input format from the model's card: a timm: or hf: "
                          f"teacher, or a JSON sidecar beside the weights file; {model!r} has none. "
                          "Give teacher.input's mean, std and size explicitly.")
    img = (kwargs or {}).get("img_size")
    if img is not None:
        spec["size"] = [int(img)] * 2 if isinstance(img, (int, float)) else [int(v) for v in img]
    return spec
