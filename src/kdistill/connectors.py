"""Adapters that map a student feature to a teacher feature's shape.

Built from shapes measured by one probe forward pass: a 1x1 convolution + BatchNorm for
feature maps (the FitNets regressor as used in the CRD benchmark), a linear layer for
vectors. Connectors train with the student and are never exported.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ShapeError


class MapConnector(nn.Module):
    """1x1 conv + BN over channels, then resize the spatial size to the teacher's if needed."""

    def __init__(self, s_shape: tuple[int, ...], t_shape: tuple[int, ...]):
        super().__init__()
        conv = nn.Conv1d if len(s_shape) == 3 else nn.Conv2d
        bn = nn.BatchNorm1d if len(s_shape) == 3 else nn.BatchNorm2d
        self.proj = nn.Sequential(conv(s_shape[1], t_shape[1], 1, bias=False), bn(t_shape[1]))
        self.size = tuple(t_shape[2:])

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[2:]) != self.size:
            x = F.adaptive_avg_pool1d(x, self.size) if x.dim() == 3 else F.adaptive_avg_pool2d(x, self.size)
        return self.proj(x)


class VectorConnector(nn.Module):
    """Linear map from a flattened student feature to the teacher's width."""

    def __init__(self, s_dim: int, t_dim: int):
        super().__init__()
        self.proj = nn.Linear(s_dim, t_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x.flatten(1))


def build_connector(
    s_shape: tuple[int, ...],
    t_shape: tuple[int, ...],
    s_name: str = "student",
    t_name: str = "teacher",
    need_maps: bool = False,
) -> nn.Module:
    """An adapter from ``s_shape`` to ``t_shape`` (both with batch dim), identity if equal.

    Raises:
        ShapeError: a map is asked for where one side is a vector (``need_maps``), or the
            two sides have different numbers of spatial dimensions.
    """
    if tuple(s_shape[1:]) == tuple(t_shape[1:]):
        return nn.Identity()
    s_map, t_map = len(s_shape) > 2, len(t_shape) > 2
    if need_maps and not (s_map and t_map):
        raise ShapeError(
            f"This method needs feature maps on both sides, but student layer {s_name!r} gives "
            f"{tuple(s_shape)} and teacher layer {t_name!r} gives {tuple(t_shape)}."
        )
    if s_map and t_map:
        if len(s_shape) != len(t_shape):
            raise ShapeError(
                f"Student layer {s_name!r} {tuple(s_shape)} and teacher layer {t_name!r} "
                f"{tuple(t_shape)} have different numbers of spatial dimensions."
            )
        return MapConnector(s_shape, t_shape)
    if t_map:
        raise ShapeError(
            f"Cannot map student vector {s_name!r} {tuple(s_shape)} onto teacher feature map "
            f"{t_name!r} {tuple(t_shape)}; pick a teacher layer that gives a vector."
        )
    s_dim = 1
    for d in s_shape[1:]:
        s_dim *= d
    return VectorConnector(s_dim, t_shape[1])
