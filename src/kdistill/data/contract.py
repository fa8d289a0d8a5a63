"""The input contract: how a raw input becomes the tensor the model was trained on.

A run records it (``model.json`` key ``preprocess``) beside the class names, and every
artifact that leaves the run carries a copy (``export.json``, the ONNX file's
``metadata_props``, a safetensors export's ``model.json``), so a photo can be turned into
the model's input with nothing but the artifact, Pillow and these numbers.

An image contract (``kind: "image"``)::

    {"kind": "image", "version": 1, "channels": 3, "channel_order": "RGB",
     "resize": 40, "size": 32, "crop": "center", "interpolation": "bilinear",
     "fit": "...", "value_range": [0, 1], "mean": [...], "std": [...], "layout": "NCHW"}

Steps, in order (:func:`kdistill.data.images.decode` then :func:`to_model_input`): decode
to ``channel_order`` (``L`` = grey); Pillow's ``ImageOps.fit`` to a ``resize`` square
(center-crop to a square, then resize, ``interpolation``); the center ``size`` crop;
divide by 255 (``value_range``); subtract ``mean`` and divide by ``std`` per channel.
``mean``/``std`` are the values used, the measured ones when the config said ``auto``.

An in-memory array source records ``kind: "array"`` with the normalisation it applied,
when it declares one (its inputs are tensors, not files).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import DataError

VERSION = 1
FIT = "center-crop to a square, then resize to resize x resize (PIL.ImageOps.fit)"


def to_model_input(u8: Tensor, size: int, mean: Any, std: Any) -> Tensor:
    """uint8 ``(N, C, H, W)`` squares -> the normalised center ``size`` crops, float32.

    The one function both evaluation (:meth:`ImageSet.eval_view`) and ``kdistill predict``
    run, so a file gives the same tensor through either."""
    from .recipe import center_crop

    x = center_crop(u8.float().div_(255.0), (size, size))
    m, s = (torch.as_tensor(t, dtype=torch.float32).to(x.device).view(1, -1, 1, 1) for t in (mean, std))
    return (x - m) / s


def image_contract(channels: int, load: int, size: int, mean: list[float], std: list[float]) -> dict[str, Any]:
    """The contract of an image source (see the module docstring)."""
    return {"kind": "image", "version": VERSION, "channels": int(channels),
            "channel_order": "L" if channels == 1 else "RGB", "resize": int(load), "size": int(size),
            "crop": "center", "interpolation": "bilinear", "fit": FIT, "value_range": [0.0, 1.0],
            "mean": [float(v) for v in mean], "std": [float(v) for v in std], "layout": "NCHW"}


def contract_of(data: Any) -> dict[str, Any] | None:
    """A dataset's input contract: its own ``contract`` (image sources), else the
    normalisation an array source declares, else ``None``."""
    own = getattr(data, "contract", None)
    if isinstance(own, dict):
        return own
    norm = getattr(data, "normalization", None)
    if norm is not None:
        mean, std = (torch.as_tensor(v, dtype=torch.float64).flatten().tolist() for v in norm[:2])
        return {"kind": "array", "version": VERSION, "mean": mean, "std": std,
                "layout": "channels first", "input_shape": list(data.input_shape)}
    return None


def check_image_contract(c: Any, source: str) -> dict[str, Any]:
    """An image contract read from a file, checked field by field (it drives decoding)."""
    if not isinstance(c, dict) or c.get("kind") != "image":
        kind = c.get("kind") if isinstance(c, dict) else None
        raise DataError(f"{source} records no image input contract (kind {kind!r}), so image files cannot be "
                        "prepared for it; give an .npz of preprocessed arrays instead, or re-train and re-export "
                        "with this kdistill version.")
    try:
        ch, load, size = int(c["channels"]), int(c["resize"]), int(c["size"])
        mean, std = [float(v) for v in c["mean"]], [float(v) for v in c["std"]]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{source}: the image input contract is damaged ({e}).") from None
    if ch not in (1, 3) or not 1 <= size <= load or len(mean) != ch or len(std) != ch or min(std) <= 0:
        raise DataError(f"{source}: the image input contract is inconsistent (channels {ch}, resize {load}, "
                        f"size {size}, mean {mean}, std {std}).")
    return {**c, "channels": ch, "resize": load, "size": size, "mean": mean, "std": std}
