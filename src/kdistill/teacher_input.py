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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    size: tuple[int, int] | None = None
    channels: int | None = None
    data_mean: tuple[float, ...] = (0.0,)
    data_std: tuple[float, ...] = (1.0,)

    @classmethod
    def make(cls, mean=None, std=None, size=None, channels=None, data_mean=(0.0,), data_std=(1.0,)) -> InputSpec:
        if size is not None:
            size = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(v) for v in size)
            if len(size) != 2 or min(size) < 1:
                raise ConfigError(f"teacher.input.size must be an int or [height, width], got {list(size)}.")
        if channels is not None and int(channels) < 1:
            raise ConfigError(f"teacher.input.channels must be positive, got {channels}.")
        return cls(_vec(mean, "mean"), _vec(std, "std"), size, None if channels is None else int(channels),
                   _vec(data_mean, "data_mean") or (0.0,), _vec(data_std, "data_std") or (1.0,))

    def as_dict(self) -> dict:
        return {"mean": list(self.mean) if self.mean else None, "std": list(self.std) if self.std else None,
                "size": list(self.size) if self.size else None, "channels": self.channels,
                "data_mean": list(self.data_mean), "data_std": list(self.data_std)}


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
    if spec.size is not None and tuple(x.shape[-2:]) != spec.size:
        if x.dim() != 4:
            raise ConfigError("teacher.input.size resizes images (N, C, H, W); these inputs are not images.")
        x = F.interpolate(x, size=spec.size, mode="bilinear", align_corners=False, antialias=True)
    if spec.mean is not None:
        x = x - _per_channel(spec.mean, x)
    if spec.std is not None:
        x = x / _per_channel(spec.std, x)
    return x.contiguous()


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
