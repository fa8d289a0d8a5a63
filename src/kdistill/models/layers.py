"""Every layer of a model with its output shape: what ``kdistill list layers`` prints."""

from __future__ import annotations

import torch

from ..errors import ShapeError
from ..taps import layer_shapes
from ._registry import create_model, default_taps


def layer_table(model_name: str, input_shape: tuple[int, ...], num_classes: int) -> dict:
    """Every module path of ``model_name`` with its type and output shape (batch dim dropped),
    plus the model's declared default taps."""
    model = create_model(model_name, num_classes, input_shape)
    # two samples, so BatchNorm in any mode accepts the probe
    example = torch.zeros(2, *input_shape)
    try:
        rows = layer_shapes(model, example)
    except RuntimeError as e:
        raise ShapeError(
            f"Model {model_name!r} does not accept inputs of shape {input_shape}: {e}. "
            f"Pass the right --input-shape."
        ) from None
    layers = [{"path": p, "type": t, "shape": list(s[1:]) if s is not None else None} for p, t, s in rows]
    return {"model": model_name, "input_shape": list(input_shape), "layers": layers,
            "default_taps": default_taps(model)}
