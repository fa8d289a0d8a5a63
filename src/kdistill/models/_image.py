"""Shared pieces of the image zoo (convnet, resnet, wrn, mobilenetv2, shufflenetv2).

Conventions of the zoo: the classifier is ``fc`` and reads a globally pooled vector
(``default_taps["embedding"] == "fc:input"``); no ReLU works in place, so a tap on a
module's input (``"layer1.0.act:input"``, ``"relu:input"``) records the pre-activation
rather than a tensor the ReLU has overwritten.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..errors import ShapeError


def image_channels(name: str, input_shape: Sequence[int]) -> int:
    """Input channels of a ``(C, H, W)`` shape, or a :class:`ShapeError` naming the model."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ShapeError(
            f"Model {name!r} takes images: input_shape must be (channels, height, width), got {shape}. "
            f"For 1-D or flat data use 'cnn1d' or 'mlp'."
        )
    return shape[0]


def global_pool() -> nn.Sequential:
    """Global average pooling to an ``(N, C)`` vector.

    The CIFAR originals pool with a fixed 8x8 (or 4x4) window, which only fits 32x32
    inputs; adaptive pooling gives the same result there and also fits 28x28 Fashion-MNIST.
    """
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


def init_weights(model: nn.Module) -> None:
    """He-normal (fan-out) convolutions, unit/zero BatchNorm, as in the CIFAR reference code.

    He et al. (2015, arXiv:1502.01852) initialisation with ``mode="fan_out"`` is what the
    CRD benchmark (Tian et al. 2019, arXiv:1910.10699) uses for its ResNets, WRNs and
    MobileNetV2; linear layers keep PyTorch's default.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
