"""MobileNetV2 (Sandler et al. 2018, arXiv:1801.04381), CIFAR variant of the CRD benchmark.

Inverted residual blocks: 1x1 expansion (ratio ``t``) -> 3x3 depthwise -> 1x1 linear
projection, with an identity shortcut when stride is 1 and widths match. The stage table
(t, c, n, s) is the paper's Table 2 with the first two strides set to 1 for 32x32 inputs,
as in the CRD benchmark (Tian et al. 2019, arXiv:1910.10699; code
github.com/HobbitLong/RepDistiller ``mobilenetv2.py``): there the stem has stride 2,
stage widths are ``int(c * width_mult)`` and the last 1x1 conv keeps 1280 channels for
``width_mult <= 1``. CRD's "MobileNetV2" is ``width_mult = 0.5`` (``mobile_half``), the
default here: 0.81M parameters at 3x32x32 and 100 classes (CRD Table 2), which the tests
check. As in that code, the ``t = 1`` block keeps its 1x1 expansion conv.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..errors import ConfigError
from ._image import global_pool, image_channels, init_weights
from ._registry import register_model

# (channels c, repeats n, first stride s) of the paper's Table 2 with CRD's CIFAR strides;
# the expansion t is 1 for the first stage and ``expansion`` (6) for the others
SETTINGS = ((16, 1, 1), (24, 2, 1), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1))


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True):
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """``x (+) project(depthwise(expand(x)))``; the projection is linear (no ReLU)."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int):
        super().__init__()
        mid = c_in * expansion
        self.conv = nn.Sequential(
            _conv_bn(c_in, mid, 1),
            _conv_bn(mid, mid, 3, stride, groups=mid),
            _conv_bn(mid, c_out, 1, relu=False),
        )
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """CIFAR MobileNetV2.

    Args:
        num_classes: output width.
        input_shape: ``(C, H, W)`` of one input.
        width_mult: channel multiplier of the stem and the blocks (CRD's default 0.5).
        expansion: expansion ratio ``t`` of all but the first block (the paper's 6).
    """

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: Sequence[int] = (3, 32, 32),
        width_mult: float = 0.5,
        expansion: int = 6,
    ):
        super().__init__()
        c_in = image_channels("mobilenetv2", input_shape)
        if width_mult <= 0 or expansion < 1:
            raise ConfigError(
                f"mobilenetv2 needs width_mult > 0 and expansion >= 1, got {width_mult} and {expansion}."
            )
        self.width_mult = width_mult
        c = max(1, int(32 * width_mult))
        self.conv1 = _conv_bn(c_in, c, 3, stride=2)
        blocks = []
        for i, (width, n, s) in enumerate(SETTINGS):
            width = max(1, int(width * width_mult))
            stage = []
            for b in range(n):
                stage.append(InvertedResidual(c, width, s if b == 0 else 1, expansion if i else 1))
                c = width
            blocks.append(nn.Sequential(*stage))
        self.blocks = nn.Sequential(*blocks)
        self.last_channels = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn(c, self.last_channels, 1)
        self.pool = global_pool()
        self.fc = nn.Linear(self.last_channels, num_classes)
        self.num_features = self.last_channels
        init_weights(self)
        # CRD's feature points: the ends of the resolution stages (16, 8, 4, 2 on 32x32)
        self.default_taps = {
            "stages": ["blocks.1", "blocks.2", "blocks.4", "blocks.6"],
            "embedding": "fc:input",
        }

    def forward_features(self, x: Tensor) -> Tensor:
        """The feature map after the last 1x1 conv."""
        return self.conv2(self.blocks(self.conv1(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.forward_features(x)))


@register_model("mobilenetv2")
def mobilenetv2(
    num_classes: int = 10,
    input_shape: Sequence[int] = (3, 32, 32),
    width_mult: float = 0.5,
    expansion: int = 6,
) -> MobileNetV2:
    """CIFAR MobileNetV2 (CRD's ``mobile_half`` by default); see :class:`MobileNetV2`."""
    return MobileNetV2(num_classes, input_shape, width_mult, expansion)
