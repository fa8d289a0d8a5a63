"""Wide residual networks (Zagoruyko & Komodakis 2016, arXiv:1605.07146) as in CRD.

WRN-d-k: a 16-channel 3x3 stem, three groups of ``n = (d - 4) / 6`` pre-activation basic
blocks (BN-ReLU-conv3x3 twice) of width 16k, 32k, 64k at strides 1, 2, 2, a final BN-ReLU,
global average pooling and a linear classifier. Where the width or stride changes, the
shortcut is a 1x1 conv applied to the block's pre-activated input, as in the authors'
code and in the CRD benchmark (Tian et al. 2019, arXiv:1910.10699).

Parameter counts at 3x32x32 and 100 classes (CRD Table 1): WRN-40-2 2.26M, WRN-16-2
0.70M; the tests check them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ._image import global_pool, image_channels, init_weights
from ._registry import register_model


class WideBlock(nn.Module):
    """Pre-activation basic block: ``conv2(relu(bn2(conv1(relu(bn1(x)))))) + shortcut``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.drop_rate = drop_rate
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(pre)))
        if self.drop_rate:
            out = F.dropout(out, self.drop_rate, self.training)
        out = self.conv2(out)
        # a projection sees the pre-activated input; an identity keeps the raw x
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-depth-widen.

    Args:
        num_classes: output width.
        input_shape: ``(C, H, W)`` of one input.
        depth: ``6n + 4`` (10, 16, 22, 28, 40, ...).
        widen: width multiplier ``k``.
        drop_rate: dropout between the two convs of each block (the paper's 0.3 is an
            option; CRD trains without it, the default here).
    """

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: Sequence[int] = (3, 32, 32),
        depth: int = 16,
        widen: int = 1,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        c_in = image_channels(f"wrn_{depth}_{widen}", input_shape)
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), not {depth}.")
        if widen < 1:
            raise ConfigError(f"WRN widen factor must be a positive integer, not {widen}.")
        n = (depth - 4) // 6
        self.depth, self.widen = depth, widen
        self.conv1 = nn.Conv2d(c_in, 16, 3, 1, 1, bias=False)
        c = 16
        for i, (width, stride) in enumerate(
            zip((16 * widen, 32 * widen, 64 * widen), (1, 2, 2), strict=True), 1
        ):
            blocks = [
                WideBlock(c if b == 0 else width, width, stride if b == 0 else 1, drop_rate) for b in range(n)
            ]
            self.add_module(f"block{i}", nn.Sequential(*blocks))
            c = width
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()
        self.pool = global_pool()
        self.fc = nn.Linear(c, num_classes)
        self.num_features = c
        init_weights(self)
        nn.init.zeros_(self.fc.bias)
        # Group outputs, as attention transfer (Zagoruyko & Komodakis 2017, arXiv:1612.03928)
        # and CRD tap them; the last one after the final BN-ReLU, the post-activation map.
        self.default_taps = {"stages": ["block1", "block2", "relu"], "embedding": "fc:input"}

    def forward_features(self, x: Tensor) -> Tensor:
        """The activated last group's feature map."""
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.relu(self.bn1(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.forward_features(x)))


@register_model("wrn")
def wrn(
    num_classes: int = 10,
    input_shape: Sequence[int] = (3, 32, 32),
    depth: int = 16,
    widen: int = 1,
    drop_rate: float = 0.0,
) -> WideResNet:
    """WRN of any ``6n + 4`` depth and widen factor; see :class:`WideResNet`."""
    return WideResNet(num_classes, input_shape, depth, widen, drop_rate)


def _variant(depth: int, widen: int):
    name = f"wrn_{depth}_{widen}"

    def factory(
        num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32), drop_rate: float = 0.0
    ) -> WideResNet:
        return WideResNet(num_classes, input_shape, depth, widen, drop_rate)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"WRN-{depth}-{widen} (CRD benchmark); see :class:`WideResNet`."
    return register_model(name)(factory)


wrn_16_1 = _variant(16, 1)
wrn_16_2 = _variant(16, 2)
wrn_40_1 = _variant(40, 1)
wrn_40_2 = _variant(40, 2)
