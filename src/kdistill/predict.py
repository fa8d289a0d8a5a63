"""Batch inference with a shipped student: a run folder or an exported ``.onnx`` file.

Input is an ``.npz`` with array ``x`` (channels first, ``(N, *input_shape)``, floating
point, already preprocessed the way the training data was). Output is an ``.npz`` with
``logits`` (float32, ``(N, classes)``), ``probs`` (softmax of the logits) and ``pred``
(int64 arg-max).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError, DataError, ShapeError

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


def read_inputs(path: str | Path) -> np.ndarray:
    """Array ``x`` of an ``.npz`` file, refusing pickles, a missing array and non-finite values."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Input file {str(path)!r} not found; give an .npz with array 'x'.")
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable .npz file without pickles ({e}).") from None
    if not hasattr(arrays, "files"):
        raise DataError(f"{path} is a single .npy array; save it as an .npz with np.savez(path, x=array).")
    if "x" not in arrays.files:
        raise DataError(f"{path} has no array 'x' (it has: {', '.join(arrays.files) or 'nothing'}); "
                        "save the inputs with np.savez(path, x=array).")
    try:
        x = arrays["x"]
    except (OSError, ValueError) as e:  # an object array needs pickle, refused
        raise DataError(f"{path}: array 'x' cannot be read without pickle ({e}); save numbers only, "
                        "e.g. np.savez(path, x=x.astype(np.float32)).") from None
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(
            f"{path}: 'x' has dtype {x.dtype}, but the model takes floating-point inputs "
            "preprocessed like its training data (e.g. images scaled and normalised); convert it "
            "with x.astype(np.float32) after the same preprocessing."
        )
    if x.ndim == 0 or x.shape[0] == 0:
        raise DataError(f"{path}: 'x' holds no samples (shape {x.shape}).")
    if not np.isfinite(x).all():
        raise DataError(f"{path}: 'x' contains NaN or Inf; clean the inputs first.")
    return x


def check_shape(x: np.ndarray, expected: tuple[Any, ...], source: str) -> None:
    """``x`` must be ``(N, *expected)``; a ``str`` or ``None`` entry in ``expected`` is free."""
    want = "(N, " + ", ".join(str(d) for d in expected) + ")"
    if x.ndim == len(expected) and all(not isinstance(e, int) or e == s for e, s in zip(expected, x.shape)):
        raise ShapeError(f"'x' has shape {x.shape}, one sample without a batch axis; {source} takes {want}: "
                         "use x[None] for a single sample.")
    fits = x.ndim == len(expected) + 1 and all(
        not isinstance(e, int) or e == s for e, s in zip(expected, x.shape[1:])
    )
    if not fits:
        raise ShapeError(f"'x' has shape {x.shape}, but {source} takes inputs of shape {want} (channels first).")


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict(source: str | Path, input_npz: str | Path, out_npz: str | Path, batch_size: int = 256,
            trust_code: bool = False) -> dict[str, Any]:
    """Run the student of a run folder (or an ``.onnx`` file) on ``input_npz['x']``.

    Args:
        source: a run folder (``model.json`` + ``model.safetensors``; its ``teacher/``
            works too) or an ``.onnx`` file (run in ONNX Runtime on CPU).
        input_npz: ``.npz`` with array ``x`` of shape ``(N, *input_shape)``.
        out_npz: where to write ``logits``, ``probs`` and ``pred``.
        batch_size: samples per forward pass.
        trust_code: allow the folder's ``model.json`` to name an importable model factory.

    Returns:
        ``{"samples", "num_classes", "out", "backend"}``.
    """
    from .atomic import atomic_write_bytes

    source = Path(source)
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}.")
    x = read_inputs(input_npz)
    if source.suffix == ".onnx":
        if not source.is_file():
            raise CheckpointError(f"ONNX file {str(source)!r} not found.")
        from .export import onnx_session

        session = onnx_session(source)
        inp = session.get_inputs()[0]
        expected = tuple(d if isinstance(d, int) else None for d in inp.shape[1:])
        check_shape(x, expected, f"the ONNX model {source.name}")
        x = x.astype(_ORT_DTYPES.get(inp.type, np.float32), copy=False)
        run = lambda xb: np.asarray(session.run(None, {inp.name: xb})[0], dtype=np.float32)
        backend = "onnxruntime"
    else:
        from .runs import load_saved

        model, record = load_saved(source, "model", trust_code)
        check_shape(x, tuple(record["input_shape"]), f"the saved {record['model']!r}")
        x = x.astype(np.float32, copy=False)

        def run(xb: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model(torch.from_numpy(np.ascontiguousarray(xb))).float().numpy()

        backend = "pytorch"
    outs = [run(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    logits = np.concatenate(outs)
    if logits.ndim != 2:
        raise ShapeError(f"The model gives outputs of shape {logits.shape}; predict needs (batch, classes) logits.")
    probs = _softmax(logits)
    pred = logits.argmax(axis=1).astype(np.int64)
    buf = io.BytesIO()
    np.savez(buf, logits=logits.astype(np.float32), probs=probs.astype(np.float32), pred=pred)
    out = Path(out_npz)
    atomic_write_bytes(out, buf.getvalue())
    return {"samples": int(x.shape[0]), "num_classes": int(logits.shape[1]), "out": str(out), "backend": backend}
