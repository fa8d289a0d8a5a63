"""Rows of token ids with shifted targets: the dataset a causal LM trains on.

It lives in ``data/`` because it implements the dataset protocol of
:mod:`kdistill.data.protocol` and holds the arrays: code outside ``data/`` reads it through
that protocol. :mod:`kdistill.lm.data` builds it from text files.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..errors import DataError

#: Hugging Face's ignore index: a position without a target (prompt tokens, padding)
IGNORE_INDEX = -100


@dataclass
class TokenDataset:
    """Rows of token ids with shifted targets (see the module docstring).

    Attributes:
        x: ``(N, L)`` int64 token ids.
        y: ``(N, L)`` int64 targets, ``-100`` where none.
        prompt_len: ``(N,)`` int64, the prompt's length in each row (generation starts there).
        num_classes: the vocabulary size.
    """

    x: Tensor
    y: Tensor
    prompt_len: Tensor
    num_classes: int
    name: str = "text"

    def __post_init__(self):
        self.x = torch.as_tensor(self.x, dtype=torch.int64)
        self.y = torch.as_tensor(self.y, dtype=torch.int64)
        self.prompt_len = torch.as_tensor(self.prompt_len, dtype=torch.int64)
        if self.x.shape != self.y.shape or self.x.dim() != 2 or self.prompt_len.shape != self.x.shape[:1]:
            raise DataError(f"{self.name}: x {tuple(self.x.shape)}, y {tuple(self.y.shape)} and prompt lengths "
                            f"{tuple(self.prompt_len.shape)} do not match.")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def class_names(self):
        return None

    @property
    def resident(self) -> bool:
        return True

    def targets(self) -> int:
        """Positions with a target."""
        return int((self.y != IGNORE_INDEX).sum())

    def take(self, index: Tensor) -> dict[str, Tensor]:
        index = torch.as_tensor(index, dtype=torch.int64)
        return {"x": self.x[index], "y": self.y[index], "index": index}

    def labels(self) -> Tensor:
        return self.y

    def example(self, n: int = 2) -> Tensor:
        return self.x[:n]

    def batches(self, batch_size: int):
        for i in range(0, len(self), batch_size):
            yield self.take(torch.arange(i, min(i + batch_size, len(self))))

    def loader(self, batch_size: int, **kwargs):
        from .loaders import DeviceLoader

        kwargs["augment"] = None  # token ids are not augmented
        return DeviceLoader(self, batch_size, **kwargs)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(repr((tuple(self.x.shape), self.num_classes)).encode())
        for t in (self.x, self.y, self.prompt_len):
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:32]

    def select(self, index: Tensor) -> TokenDataset:
        index = torch.as_tensor(index, dtype=torch.int64)
        return replace(self, x=self.x[index], y=self.y[index], prompt_len=self.prompt_len[index])

    def relabel(self, lut: Tensor, num_classes: int) -> TokenDataset:
        raise DataError("Token datasets cannot be relabelled (their labels are next tokens).")

    def validate(self, require_labels: bool = True) -> None:
        """Refuse no rows, token ids outside the vocabulary, and (``require_labels``) rows
        without a single target."""
        if len(self) == 0:
            raise DataError(f"{self.name}: no rows of text.")
        bad = (self.x < 0) | (self.x >= self.num_classes)
        bad_y = (self.y != IGNORE_INDEX) & ((self.y < 0) | (self.y >= self.num_classes))
        if bad.any() or bad_y.any():
            raise DataError(f"{self.name}: token ids must lie in [0, {self.num_classes}) (the vocabulary).")
        if require_labels and self.targets() == 0:
            raise DataError(f"{self.name}: no position has a target.")

    def concat(self, other) -> TokenDataset:
        raise DataError(f"{self.name}: transfer sets (data.transfer) are for classification data.")
