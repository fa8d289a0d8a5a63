"""The MNIST-1D convolutional network (Greydanus 2020, "Scaling down deep learning").

Three strided 1-D convolutions of 25 channels and a linear head, as in the mnist1d
package's reference ConvBase; about 5.7k parameters at length 40.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._registry import register_model


class CNN1d(nn.Module):
    def __init__(self, num_classes: int = 10, input_shape: Sequence[int] = (1, 40), channels: int = 25):
        super().__init__()
        c_in = input_shape[0] if len(input_shape) == 2 else 1
        self.conv1 = nn.Conv1d(c_in, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.act1, self.act2, self.act3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        with torch.no_grad():
            n = self._features(torch.zeros(1, c_in, input_shape[-1])).numel()
        self.flatten = nn.Flatten()
        self.head = nn.Linear(n, num_classes)
        self.default_taps = {"stages": ["act1", "act2", "act3"], "embedding": "head:input"}

    def _features(self, x: Tensor) -> Tensor:
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        return self.act3(self.conv3(x))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.head(self.flatten(self._features(x)))


@register_model("cnn1d")
def cnn1d(num_classes: int = 10, input_shape: Sequence[int] = (1, 40), **kwargs) -> CNN1d:
    return CNN1d(num_classes, input_shape, **kwargs)
