"""ShuffleNetV2 (Ma et al. 2018, arXiv:1807.11164), CIFAR variant of the CRD benchmark.

Each unit splits its channels in two, transforms one half (1x1 conv -> 3x3 depthwise ->
1x1 conv), concatenates and shuffles the channels between the two groups; a down-sampling
unit processes both branches at stride 2 and doubles the width. The CIFAR variant of the
CRD benchmark (Tian et al. 2019, arXiv:1910.10699; code github.com/HobbitLong/RepDistiller
``ShuffleNetv2.py``) replaces the ImageNet stem (3x3 stride-2 conv + max-pool) with a
24-channel 1x1 conv, and starts each of the three stages with a down-sampling unit followed
by 3, 7 and 3 basic units; a 1x1 conv widens the last stage before pooling. Stage widths
per ``net_size`` are the paper's Table 5 (1.0: 116/232/464, last conv 1024).
CRD's "ShuffleNetV2" is ``net_size = 1``: 1.35M parameters at 3x32x32 and 100 classes
(CRD Table 2), which the tests check.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ._image import global_pool, image_channels, init_weights
from ._registry import register_model

# net_size -> (stage widths, last conv width, basic units per stage), CRD's table
CONFIGS: dict[float, tuple[tuple[int, int, int], int, tuple[int, int, int]]] = {
    0.5: ((48, 96, 192), 1024, (3, 7, 3)),
    1.0: ((116, 232, 464), 1024, (3, 7, 3)),
    1.5: ((176, 352, 704), 1024, (3, 7, 3)),
    2.0: ((244, 488, 976), 2048, (3, 7, 3)),
}


def channel_shuffle(x: Tensor, groups: int = 2) -> Tensor:
    """Interleave the channels of ``groups`` equal groups (Zhang et al. 2017, arXiv:1707.01083)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, depthwise: bool = False, relu: bool = True):
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=c_in if depthwise else 1, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _branch(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    # 1x1 -> 3x3 depthwise (no ReLU, per the paper's Fig. 3) -> 1x1
    return nn.Sequential(
        _conv_bn(c_in, c_out, 1),
        _conv_bn(c_out, c_out, 3, stride, depthwise=True, relu=False),
        _conv_bn(c_out, c_out, 1),
    )


class ShuffleUnit(nn.Module):
    """Basic unit (stride 1, width kept): half the channels pass through, half are transformed."""

    def __init__(self, channels: int):
        super().__init__()
        self.branch = _branch(channels // 2, channels // 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        keep, rest = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([keep, self.branch(rest)], 1))


class DownUnit(nn.Module):
    """Down-sampling unit: both branches see all channels at stride 2; output width ``c_out``."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        half = c_out // 2
        self.left = nn.Sequential(
            _conv_bn(c_in, c_in, 3, 2, depthwise=True, relu=False),
            _conv_bn(c_in, half, 1),
        )
        self.right = _branch(c_in, half, 2)

    def forward(self, x: Tensor) -> Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1))


class ShuffleNetV2(nn.Module):
    """CIFAR ShuffleNetV2.

    Args:
        num_classes: output width.
        input_shape: ``(C, H, W)`` of one input.
        net_size: width setting, one of 0.5, 1.0, 1.5, 2.0 (the paper's multipliers).
    """

    def __init__(
        self, num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32), net_size: float = 1.0
    ):
        super().__init__()
        c_in = image_channels("shufflenetv2", input_shape)
        if float(net_size) not in CONFIGS:
            raise ConfigError(f"shufflenetv2 net_size must be one of {sorted(CONFIGS)}, not {net_size!r}.")
        widths, last, repeats = CONFIGS[float(net_size)]
        self.net_size = float(net_size)
        self.conv1 = _conv_bn(c_in, 24, 1)
        c = 24
        for i, (width, n) in enumerate(zip(widths, repeats, strict=True), 1):
            units = [DownUnit(c, width)] + [ShuffleUnit(width) for _ in range(n)]
            self.add_module(f"layer{i}", nn.Sequential(*units))
            c = width
        self.conv2 = _conv_bn(c, last, 1)
        self.pool = global_pool()
        self.fc = nn.Linear(last, num_classes)
        self.num_features = last
        init_weights(self)
        self.default_taps = {"stages": ["layer1", "layer2", "layer3"], "embedding": "fc:input"}

    def forward_features(self, x: Tensor) -> Tensor:
        """The feature map after the last 1x1 conv."""
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.conv2(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.forward_features(x)))


@register_model("shufflenetv2")
def shufflenetv2(
    num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32), net_size: float = 1.0
) -> ShuffleNetV2:
    """CIFAR ShuffleNetV2 (CRD's ``ShuffleV2`` by default); see :class:`ShuffleNetV2`."""
    return ShuffleNetV2(num_classes, input_shape, net_size)
