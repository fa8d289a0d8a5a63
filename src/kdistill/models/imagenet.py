"""ImageNet-style networks for 224x224 photos: ResNet-50 (and -18/-34/-101) and MobileNetV2 1.0.

Written from the papers, with the layout of the reference implementations so that the
published parameter counts hold (the tests check them at 3x224x224, 1000 classes):

* ResNet (He et al. 2016, arXiv:1512.03385, Table 1): a 7x7/2 stem and 3x3/2 max-pool,
  four stages at strides 1, 2, 2, 2, bottleneck blocks (1x1, 3x3, 1x1 with expansion 4)
  for depth >= 50 and basic blocks below, 1x1 conv + BatchNorm projection shortcuts where
  the shape changes; the stride sits on the 3x3 conv (the "v1.5" of torchvision's
  ``resnet.py``, which the published 25,557,032 parameters of ResNet-50 count).
  ResNet-18: 11,689,512.
* MobileNetV2 (Sandler et al. 2018, arXiv:1801.04381, Table 2): a 3x3/2 stem of 32
  channels, inverted residuals (t, c, n, s) = (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2)
  (6,96,3,1) (6,160,3,2) (6,320,1,1), a 1x1 conv to 1280, dropout 0.2 and the classifier;
  ReLU6; the t = 1 block has no expansion conv; widths rounded to multiples of 8 (the
  ``_make_divisible`` rule of the reference code). Width 1.0: 3,504,872 parameters.

``width`` (ResNet's base width, 64) and ``width_mult`` (MobileNetV2's) shrink them for
tests and small data; the architecture stays the same.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..errors import ConfigError
from ._image import global_pool, image_channels, init_weights
from ._registry import register_model

DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
          101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}


def _project(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class Basic(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.shortcut = _project(c_in, planes, stride)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.act(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x))``, stride on conv2."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
        self.shortcut = _project(c_in, out, stride)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        return self.act(self.bn3(self.conv3(out)) + self.shortcut(x))


class ImageNetResNet(nn.Module):
    """ResNet-18/34/50/101/152 (ImageNet layout); see the module docstring."""

    def __init__(self, num_classes: int = 1000, input_shape: Sequence[int] = (3, 224, 224), depth: int = 50,
                 width: int = 64):
        super().__init__()
        c_in = image_channels(f"resnet{depth}", input_shape)
        if depth not in DEPTHS:
            raise ConfigError(f"ImageNet ResNet depth must be one of {sorted(DEPTHS)}, not {depth}.")
        if width < 1:
            raise ConfigError(f"ResNet width must be >= 1, got {width}.")
        kind, counts = DEPTHS[depth]
        block = Bottleneck if kind == "bottleneck" else Basic
        self.conv1 = nn.Conv2d(c_in, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c = width
        for i, (n, stride) in enumerate(zip(counts, (1, 2, 2, 2)), 1):
            planes = width * 2 ** (i - 1)
            blocks = []
            for b in range(n):
                blocks.append(block(c, planes, stride if b == 0 else 1))
                c = planes * block.expansion
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        self.pool = global_pool()
        self.fc = nn.Linear(c, num_classes)
        self.num_features = c
        init_weights(self)
        self.default_taps = {"stages": ["layer1", "layer2", "layer3", "layer4"], "embedding": "fc:input"}

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.forward_features(x)))


def _imagenet_resnet(depth: int):
    def factory(num_classes: int = 1000, input_shape: Sequence[int] = (3, 224, 224), width: int = 64):
        return ImageNetResNet(num_classes, input_shape, depth, width)

    factory.__name__ = factory.__qualname__ = f"resnet{depth}"
    factory.__doc__ = f"ImageNet ResNet-{depth} (He et al. 2016); ``width`` is the stem/base width (64)."
    return register_model(f"resnet{depth}")(factory)


resnet18 = _imagenet_resnet(18)
resnet34 = _imagenet_resnet(34)
resnet50 = _imagenet_resnet(50)
resnet101 = _imagenet_resnet(101)


def make_divisible(v: float, divisor: int = 8) -> int:
    """``v`` rounded to a multiple of ``divisor``, never below 90% of ``v`` (reference rule)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _cbr(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(c_out)]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, t: int):
        super().__init__()
        mid = int(round(c_in * t))
        layers = [] if t == 1 else [_cbr(c_in, mid, 1)]
        layers += [_cbr(mid, mid, 3, stride, groups=mid), _cbr(mid, c_out, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2ImageNet(nn.Module):
    """MobileNetV2 for 224x224 inputs; see the module docstring."""

    def __init__(self, num_classes: int = 1000, input_shape: Sequence[int] = (3, 224, 224), width_mult: float = 1.0,
                 dropout: float = 0.2):
        super().__init__()
        c_in = image_channels("mobilenetv2_imagenet", input_shape)
        if width_mult <= 0 or not 0 <= dropout < 1:
            raise ConfigError(f"mobilenetv2_imagenet needs width_mult > 0 and 0 <= dropout < 1, got {width_mult}, "
                              f"{dropout}.")
        c = make_divisible(32 * width_mult)
        self.conv1 = _cbr(c_in, c, 3, 2)
        stages = []
        for t, width, n, s in SETTINGS:
            out = make_divisible(width * width_mult)
            blocks = []
            for b in range(n):
                blocks.append(InvertedResidual(c, out, s if b == 0 else 1, t))
                c = out
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.last_channels = make_divisible(1280 * max(1.0, width_mult))
        self.conv2 = _cbr(c, self.last_channels, 1)
        self.pool = global_pool()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.last_channels, num_classes)
        self.num_features = self.last_channels
        init_weights(self)
        # the ends of the stride-4, 8, 16 and 32 stages
        self.default_taps = {"stages": ["blocks.1", "blocks.2", "blocks.4", "blocks.6"], "embedding": "fc:input"}

    def forward_features(self, x: Tensor) -> Tensor:
        return self.conv2(self.blocks(self.conv1(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.pool(self.forward_features(x))))


@register_model("mobilenetv2_imagenet")
def mobilenetv2_imagenet(num_classes: int = 1000, input_shape: Sequence[int] = (3, 224, 224), width_mult: float = 1.0,
                         dropout: float = 0.2) -> MobileNetV2ImageNet:
    """MobileNetV2 (Sandler et al. 2018) for 224x224 photos, width 1.0 by default."""
    return MobileNetV2ImageNet(num_classes, input_shape, width_mult, dropout)
