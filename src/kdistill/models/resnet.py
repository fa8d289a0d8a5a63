"""CIFAR ResNets (He et al. 2016, "Deep Residual Learning", arXiv:1512.03385) as in CRD.

The CRD benchmark (Tian et al. 2019, "Contrastive Representation Distillation",
arXiv:1910.10699; code: github.com/HobbitLong/RepDistiller) uses the CIFAR ResNet of
He et al. Sec. 4.2: a 3x3 stem, three stages of ``n`` basic blocks (two 3x3 convs each) at
strides 1, 2, 2, global average pooling and a linear classifier, depth ``6n + 2``. Its
shortcuts are 1x1 conv + BatchNorm projections where the shape changes (the paper's
option B). Stage widths are 16/32/64 after a 16-channel stem; the ``x4`` nets of CRD widen
them to 64/128/256 after a 32-channel stem.

Parameter counts at 3x32x32 and 100 classes (CRD Table 1 / RepDistiller): resnet20 0.28M,
resnet56 0.86M, resnet110 1.73M, resnet8x4 1.23M, resnet32x4 7.43M; the tests check them.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..errors import ConfigError
from ._image import global_pool, image_channels, init_weights
from ._registry import register_model

WIDTHS = (16, 16, 32, 64)  # stem, stage1, stage2, stage3 (He et al. Sec. 4.2)
WIDTHS_X4 = (32, 64, 128, 256)  # CRD's resnet8x4 / resnet32x4


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )
        # a module of its own (not self.relu, which runs earlier) so the block output and,
        # via "act:input", the pre-activation sum can both be tapped
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet of depth ``6n + 2`` with basic blocks.

    Args:
        num_classes: output width.
        input_shape: ``(C, H, W)`` of one input.
        depth: total weighted layers, ``6n + 2`` (8, 14, 20, 32, 44, 56, 110, ...).
        widths: channels of the stem and the three stages.
    """

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: Sequence[int] = (3, 32, 32),
        depth: int = 20,
        widths: Sequence[int] = WIDTHS,
    ):
        super().__init__()
        c_in = image_channels(f"resnet{depth}", input_shape)
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, ...), not {depth}.")
        if len(widths) != 4:
            raise ConfigError(f"ResNet widths are (stem, stage1, stage2, stage3), got {tuple(widths)}.")
        n = (depth - 2) // 6
        self.depth, self.widths = depth, tuple(widths)
        self.conv1 = nn.Conv2d(c_in, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        c = widths[0]
        for i, (width, stride) in enumerate(zip(widths[1:], (1, 2, 2), strict=True), 1):
            blocks = [BasicBlock(c if b == 0 else width, width, stride if b == 0 else 1) for b in range(n)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            c = width
        self.pool = global_pool()
        self.fc = nn.Linear(c, num_classes)
        self.num_features = c
        init_weights(self)
        self.default_taps = {"stages": ["layer1", "layer2", "layer3"], "embedding": "fc:input"}

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's feature map."""
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.forward_features(x)))


@register_model("resnet")
def resnet(
    num_classes: int = 10,
    input_shape: Sequence[int] = (3, 32, 32),
    depth: int = 20,
    widths: Sequence[int] = WIDTHS,
) -> ResNet:
    """CIFAR ResNet of any ``6n + 2`` depth; see :class:`ResNet`."""
    return ResNet(num_classes, input_shape, depth, widths)


def _variant(name: str, depth: int, widths: tuple[int, ...]):
    def factory(num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32)) -> ResNet:
        return ResNet(num_classes, input_shape, depth, widths)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"CIFAR ResNet-{depth}, widths {widths} (CRD benchmark)."
    return register_model(name)(factory)


resnet8 = _variant("resnet8", 8, WIDTHS)
resnet14 = _variant("resnet14", 14, WIDTHS)
resnet20 = _variant("resnet20", 20, WIDTHS)
resnet32 = _variant("resnet32", 32, WIDTHS)
resnet44 = _variant("resnet44", 44, WIDTHS)
resnet56 = _variant("resnet56", 56, WIDTHS)
resnet110 = _variant("resnet110", 110, WIDTHS)
resnet8x4 = _variant("resnet8x4", 8, WIDTHS_X4)
resnet32x4 = _variant("resnet32x4", 32, WIDTHS_X4)
