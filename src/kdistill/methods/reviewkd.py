"""ReviewKD: distilling knowledge via knowledge review.

Chen, Liu, Zhao & Jia (2021), "Distilling Knowledge via Knowledge Review", CVPR,
arXiv:2104.09044. Each teacher stage is matched by a *fusion* of the student's stage at the
same depth and every deeper one: going from the deepest stage to the shallowest, an
attention-based fusion (ABF) block maps the student feature to ``mid`` channels (1x1 conv +
BN), blends it with the upsampled running fusion of the deeper stages using two
sigmoid attention maps computed from both, resizes to the teacher stage's size and maps to
the teacher's channels (3x3 conv + BN). The hierarchical context loss (HCL) compares each
fused map with the teacher's at full resolution and after average pooling to 4, 2 and 1
(pyramid levels, weights 1, 1/2, 1/4, 1/8, normalised), and the levels' losses are summed.

Layer pairs are the deepest ``min(#stages)`` stages of each network (the paper also fuses
the pooled embedding as a 1x1 level; this version uses the stages only). Works on 2-D and
1-D maps.

Defaults (the paper's CIFAR-100 setting, as in mdistiller): loss weight 1.0 with a linear
warm-up over 20 epochs (following the distiller's epoch, see
:meth:`~kdistill.methods.Distiller.set_epoch`), CE weight 1.0, ``mid`` channels ``min(512, deepest student
channels)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, ShapeError
from ._base import Context, Method
from ._pairs import probe_shapes, require_example, stage_pairs
from ._registry import register_method


def _pool(x: Tensor, size: int) -> Tensor:
    return F.adaptive_avg_pool1d(x, size) if x.dim() == 3 else F.adaptive_avg_pool2d(x, (size, size))


def hcl_loss(student_maps: list[Tensor], teacher_maps: list[Tensor], levels: tuple[int, ...] = (4, 2, 1)
             ) -> Tensor:
    """Hierarchical context loss summed over the layer pairs (Chen et al. 2021).

    For each pair: MSE at full size (weight 1) plus MSE after pooling to each level ``l``
    smaller than the map (weights 1/2, 1/4, ...), divided by the sum of the weights used.
    """
    total = 0.0
    for fs, ft in zip(student_maps, teacher_maps, strict=True):
        fs, ft = fs.float(), ft.detach().float()
        loss, weight, weights = F.mse_loss(fs, ft), 1.0, 1.0
        for level in levels:
            if level >= fs.shape[-1]:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(_pool(fs, level), _pool(ft, level))
            weights += weight
        total = total + loss / weights
    return total


class ABF(nn.Module):
    """Attention-based fusion of one student stage with the fusion of the deeper ones."""

    def __init__(self, in_channels: int, mid: int, out_channels: int, fuse: bool, spatial_dims: int):
        super().__init__()
        conv = nn.Conv1d if spatial_dims == 1 else nn.Conv2d
        bn = nn.BatchNorm1d if spatial_dims == 1 else nn.BatchNorm2d
        self.reduce = nn.Sequential(conv(in_channels, mid, 1, bias=False), bn(mid))
        self.expand = nn.Sequential(conv(mid, out_channels, 3, padding=1, bias=False), bn(out_channels))
        self.attention = nn.Sequential(conv(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None

    def forward(self, x: Tensor, deeper: Tensor | None, out_size: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        x = self.reduce(x)
        if self.attention is not None and deeper is not None:
            deeper = F.interpolate(deeper, size=tuple(x.shape[2:]), mode="nearest")
            z = self.attention(torch.cat([x, deeper], dim=1))
            x = x * z[:, :1] + deeper * z[:, 1:]
        if tuple(x.shape[2:]) != out_size:
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.expand(x), x


@register_method("reviewkd")
class ReviewKD(Method):
    """Knowledge review (Chen et al. 2021); see the module docstring."""

    default_weight = 1.0
    default_ce_weight = 1.0

    @dataclass
    class Config:
        student_layers: list[str] | None = None
        teacher_layers: list[str] | None = None
        num_stages: int | None = None
        max_mid_channels: int = 512
        warmup: int = 20

    def __init__(self, cfg, student, teacher, example):
        super().__init__(cfg, student, teacher, example)
        if cfg.warmup < 0 or cfg.max_mid_channels < 1:
            raise ConfigError(f"reviewkd: need warmup >= 0 and max_mid_channels >= 1; got {cfg}.")
        self.student_taps, self.teacher_taps = stage_pairs(
            "reviewkd", cfg.student_layers, cfg.teacher_layers, student, teacher, last=cfg.num_stages
        )
        s_shapes, t_shapes = probe_shapes(
            student, teacher, self.student_taps, self.teacher_taps, require_example("reviewkd", example)[:2]
        )
        for s, t in zip(self.student_taps, self.teacher_taps, strict=True):
            if len(s_shapes[s]) not in (3, 4) or len(s_shapes[s]) != len(t_shapes[t]):
                raise ShapeError(
                    f"reviewkd needs feature maps of the same kind on both sides, but student layer {s!r} "
                    f"gives {s_shapes[s]} and teacher layer {t!r} gives {t_shapes[t]}."
                )
        dims = len(s_shapes[self.student_taps[0]]) - 2
        mid = min(cfg.max_mid_channels, s_shapes[self.student_taps[-1]][1])
        n = len(self.student_taps)
        # built shallow to deep; the deepest block has nothing deeper to fuse with
        self.abfs = nn.ModuleList(
            ABF(s_shapes[s][1], mid, t_shapes[t][1], i < n - 1, dims)
            for i, (s, t) in enumerate(zip(self.student_taps, self.teacher_taps, strict=True))
        )
        self.out_sizes = [tuple(t_shapes[t][2:]) for t in self.teacher_taps]

    def forward(self, ctx: Context) -> Tensor:
        fused: list[Tensor] = []
        deeper = None
        for i in reversed(range(len(self.abfs))):
            out, deeper = self.abfs[i](ctx.student_features[self.student_taps[i]], deeper, self.out_sizes[i])
            fused.insert(0, out)
        teacher_maps = [ctx.teacher.features[t] for t in self.teacher_taps]
        # linear warm-up over the first epochs (0-based here, 1-based in the official code)
        ramp = 1.0 if self.cfg.warmup == 0 else min((ctx.epoch + 1) / self.cfg.warmup, 1.0)
        return ramp * hcl_loss(fused, teacher_maps)
