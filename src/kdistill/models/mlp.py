"""Multi-layer perceptrons: the students of Hinton et al. (2015) and of the demo."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from ._registry import register_model


class MLP(nn.Module):
    """``flatten -> [fc_i -> relu_i -> (dropout_i)] * k -> head``.

    Args:
        num_classes: output width.
        input_shape: input shape without batch dimension (flattened).
        hidden: widths of the hidden layers.
        dropout: dropout after each hidden layer (Hinton's teacher uses 0.5; 0 is none).
        input_dropout: dropout on the input (Hinton's teacher uses 0.2).
    """

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: Sequence[int] = (1, 28, 28),
        hidden: Sequence[int] = (800, 800),
        dropout: float = 0.0,
        input_dropout: float = 0.0,
    ):
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        if input_dropout:
            layers["drop_in"] = nn.Dropout(input_dropout)
        width = math.prod(input_shape)
        stages = []
        for i, h in enumerate(hidden, 1):
            layers[f"fc{i}"] = nn.Linear(width, h)
            layers[f"relu{i}"] = nn.ReLU()
            stages.append(f"body.relu{i}")
            if dropout:
                layers[f"drop{i}"] = nn.Dropout(dropout)
            width = h
        self.body = nn.Sequential(layers)
        self.head = nn.Linear(width, num_classes)
        self.default_taps = {"stages": stages, "embedding": "head:input"}

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


@register_model("mlp")
def mlp(num_classes: int = 10, input_shape: Sequence[int] = (1, 28, 28), **kwargs) -> MLP:
    return MLP(num_classes, input_shape, **kwargs)
