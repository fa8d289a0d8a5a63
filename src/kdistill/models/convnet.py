"""Plain CNNs of the teacher-assistant paper (Mirzadeh et al. 2019, arXiv:1902.03393).

"Improved Knowledge Distillation via Teacher Assistant" distils a 10-layer plain CNN
through 8-, 6- and 4-layer assistants into a 2-layer student. Each layer is a 3x3
convolution (padding 1) -> BatchNorm -> ReLU; 2x2 max-pooling closes each stage and one or
two linear layers form the head.

The exact widths, pooling positions and heads come from the authors' released code
(github.com/imirzadeh/Teacher-Assistant-Knowledge-Distillation, ``model_factory.py``:
``plane_cifar10_book`` and ``plane_cifar100_book``):

======  ===========================  =====  ===============================  =====
layers  CIFAR-10 stages              head   CIFAR-100 stages                 head
======  ===========================  =====  ===============================  =====
2       16 | 16                      -      32 | 32                          -
4       16 16 | 32 32                -      32 32 | 64 64                    -
6       16 16 | 32 32 | 64 64        -      32 32 | 64 64 | 128 128 (*)      -
8       ... | 128 128                64     ... | 256 256                    64
10      32 32 | 64 64 | 128 128 |    128    32 32 | 64 64 | 128 128 |        512
        256 256 256 256                     256 256 256 256
======  ===========================  =====  ===============================  =====

``|`` is a 2x2 max-pool; (*) the CIFAR-100 6-layer net has no pool after its last stage.
"head" is the hidden width of an extra linear + ReLU before the classifier.

Two deliberate changes, so one network fits 28x28 Fashion-MNIST as well as 32x32 CIFAR:
the head reads the globally average-pooled last stage instead of the flattened map (the
original's first linear layer is sized for 32x32 only), and pooling rounds up
(``ceil_mode``) so four pools still leave a 1x1 map on an 8x8 input. On 32x32 inputs the
pooled sizes are the same as the original's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from ..errors import ConfigError
from ._image import global_pool, image_channels, init_weights
from ._registry import register_model


@dataclass(frozen=True)
class _Spec:
    stages: tuple[tuple[int, ...], ...]  # conv widths per stage; a max-pool after each
    hidden: tuple[int, ...] = ()  # hidden linear widths of the head
    last_pool: bool = True  # False: no max-pool after the last stage


# Transcribed from the TAKD code's layer books (see module docstring).
SPECS: dict[str, dict[int, _Spec]] = {
    "cifar10": {
        2: _Spec(((16,), (16,))),
        4: _Spec(((16, 16), (32, 32))),
        6: _Spec(((16, 16), (32, 32), (64, 64))),
        8: _Spec(((16, 16), (32, 32), (64, 64), (128, 128)), (64,)),
        10: _Spec(((32, 32), (64, 64), (128, 128), (256,) * 4), (128,)),
    },
    "cifar100": {
        2: _Spec(((32,), (32,))),
        4: _Spec(((32, 32), (64, 64))),
        6: _Spec(((32, 32), (64, 64), (128, 128)), last_pool=False),
        8: _Spec(((32, 32), (64, 64), (128, 128), (256, 256)), (64,)),
        10: _Spec(((32, 32), (64, 64), (128, 128), (256,) * 4), (512,)),
    },
}


class ConvNet(nn.Module):
    """A TAKD plain CNN: ``stage1 .. stageK -> pool -> [hidden linear + ReLU] -> fc``.

    Args:
        num_classes: output width.
        input_shape: ``(C, H, W)`` of one input.
        layers: number of convolutional layers: 2, 4, 6, 8 or 10 (the paper's sizes).
        variant: ``"cifar10"`` or ``"cifar100"`` layer book; ``None`` picks ``"cifar10"``
            for up to 10 classes and ``"cifar100"`` otherwise, as the TAKD code does.
    """

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: Sequence[int] = (3, 32, 32),
        layers: int = 2,
        variant: str | None = None,
    ):
        super().__init__()
        c_in = image_channels(f"convnet{layers}", input_shape)
        variant = variant or ("cifar10" if num_classes <= 10 else "cifar100")
        if variant not in SPECS:
            raise ConfigError(f"convnet variant must be one of {sorted(SPECS)}, not {variant!r}.")
        if layers not in SPECS[variant]:
            raise ConfigError(
                f"convnet has {sorted(SPECS[variant])} conv layers in the TAKD paper, not {layers!r}."
            )
        spec = SPECS[variant][layers]
        self.layers, self.variant = layers, variant

        stage_taps = []
        for s, widths in enumerate(spec.stages, 1):
            mods: OrderedDict[str, nn.Module] = OrderedDict()
            for i, width in enumerate(widths, 1):
                mods[f"conv{i}"] = nn.Conv2d(c_in, width, 3, padding=1)
                mods[f"bn{i}"] = nn.BatchNorm2d(width)
                mods[f"relu{i}"] = nn.ReLU()
                c_in = width
            # tap before the pool: the stage's full-resolution post-ReLU map
            stage_taps.append(f"stage{s}.relu{len(widths)}")
            if s < len(spec.stages) or spec.last_pool:
                mods["pool"] = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.add_module(f"stage{s}", nn.Sequential(mods))
        self.num_stages = len(spec.stages)

        self.pool = global_pool()
        head: OrderedDict[str, nn.Module] = OrderedDict()
        for i, width in enumerate(spec.hidden, 1):
            head[f"fc{i}"] = nn.Linear(c_in, width)
            head[f"relu{i}"] = nn.ReLU()
            c_in = width
        self.hidden = nn.Sequential(head)
        self.fc = nn.Linear(c_in, num_classes)
        self.num_features = c_in
        init_weights(self)
        self.default_taps = {"stages": stage_taps, "embedding": "fc:input"}

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's feature map."""
        for s in range(1, self.num_stages + 1):
            x = getattr(self, f"stage{s}")(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.hidden(self.pool(self.forward_features(x))))


@register_model("convnet")
def convnet(
    num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32), layers: int = 2, **kwargs
) -> ConvNet:
    """TAKD plain CNN with ``layers`` conv layers (2, 4, 6, 8 or 10); see :class:`ConvNet`."""
    return ConvNet(num_classes, input_shape, layers=layers, **kwargs)


def _fixed_depth(layers: int):
    def factory(num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32), **kwargs) -> ConvNet:
        return ConvNet(num_classes, input_shape, layers=layers, **kwargs)

    factory.__name__ = factory.__qualname__ = f"convnet{layers}"
    factory.__doc__ = f"TAKD plain CNN with {layers} conv layers; see :class:`ConvNet`."
    return register_model(f"convnet{layers}")(factory)


convnet2, convnet4, convnet6, convnet8, convnet10 = (_fixed_depth(n) for n in (2, 4, 6, 8, 10))
