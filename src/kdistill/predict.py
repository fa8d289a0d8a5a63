"""Batch inference with a shipped student: a run folder or an exported ``.onnx`` file.

Two kinds of input:

* **image files** (:func:`predict_files`; files and folders, searched recursively): each is
  decoded and normalised by :func:`kdistill.data.images.load_images`, the very code the
  run's test split goes through, driven by the input contract the artifact carries
  (``model.json``'s ``preprocess`` or the ONNX file's ``metadata_props``), so an ``.onnx``
  file alone is enough. The answer per file is its top-k classes by name with their
  softmax probabilities (printed, and written to a ``.csv``). A baked ONNX file
  (``kdistill export --bake-preprocess``: uint8 HWC pixels in, probabilities out) gets the
  decoded ``resize`` square and does the crop and normalisation itself.
* **an .npz** with array ``x`` (channels first, ``(N, *input_shape)``, floating point,
  already preprocessed the way the training data was); output an ``.npz`` with ``logits``
  (float32, ``(N, classes)``), ``probs`` (softmax of the logits) and ``pred`` (int64 arg-max).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import imagefolder
from .data.contract import check_image_contract
from .data.images import BadImage, Geometry, decode, load_images
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


# -- image files -------------------------------------------------------------------------------
def collect_images(inputs: list[str | Path]) -> list[Path]:
    """Image files among ``inputs`` (files as given; folders searched recursively, sorted;
    the extensions of :mod:`kdistill.data.imagefolder`)."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = [Path(f) for f, _ in imagefolder._images_in(p)]
            if not found:
                raise DataError(f"{p} holds no images ({', '.join(imagefolder.EXTENSIONS)}).")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"Input {str(p)!r} not found; give image files or folders of images.")
    return files


class Predictor:
    """A shipped student as a function of image files: its contract, class names and runner.

    ``baked``: the ONNX graph takes uint8 ``(N, resize, resize, C)`` and returns probabilities."""

    def __init__(self, source: str | Path, trust_code: bool = False):
        source = Path(source)
        self.source = source
        if source.suffix == ".onnx":
            self._open_onnx(source)
        else:
            from .runs import load_saved

            model, record = load_saved(source, "model", trust_code)
            self.meta = record
            self.baked, self.backend = False, "pytorch"
            self._run = lambda x: model(torch.from_numpy(x)).float().numpy()
        self.contract = check_image_contract(self.meta.get("preprocess"), str(source))
        names = self.meta.get("class_names")
        k = int(self.meta.get("num_classes") or 0)
        self.class_names = [str(n) for n in names] if isinstance(names, list) and len(names) == k else None

    def _open_onnx(self, source: Path) -> None:
        if not source.is_file():
            raise CheckpointError(f"ONNX file {str(source)!r} not found.")
        from .export import onnx_session

        session = onnx_session(source)
        props = session.get_modelmeta().custom_metadata_map
        try:
            self.meta = {k.split(".", 1)[1]: json.loads(v) for k, v in props.items() if k.startswith("kdistill.")
                         and k != "kdistill.model"}
        except ValueError:
            raise DataError(f"{source}: the kdistill metadata in the ONNX file is damaged (not JSON).") from None
        inp = session.get_inputs()[0]
        self.baked = inp.type == "tensor(uint8)"
        self.backend = "onnxruntime" + (" (preprocessing baked in)" if self.baked else "")
        dtype = np.uint8 if self.baked else _ORT_DTYPES.get(inp.type, np.float32)
        self._run = lambda x: np.asarray(session.run(None, {inp.name: x.astype(dtype, copy=False)})[0], np.float32)

    def inputs(self, files: list[Path]) -> np.ndarray:
        """The model's input batch for ``files`` (uint8 HWC squares for a baked graph)."""
        if not self.baked:
            return load_images(files, self.contract).numpy()
        c = self.contract
        geo = Geometry(c["size"], c["resize"], c["channels"])
        try:
            return np.stack([decode(f, geo).transpose(1, 2, 0) for f in files])
        except (BadImage, OSError) as e:
            raise DataError(f"cannot decode one of {[str(f) for f in files][:3]}: {e}.") from None

    def probs(self, files: list[Path]) -> np.ndarray:
        with torch.no_grad():
            out = self._run(self.inputs(files))
        return out if self.baked else _softmax(out)


def predict_files(source: str | Path, inputs: list[str | Path], top_k: int = 1, out: str | Path | None = None,
                  batch_size: int = 64, trust_code: bool = False) -> dict[str, Any]:
    """Top-``top_k`` classes of every image file in ``inputs`` (see the module docstring).

    Returns ``{"rows": [{"file", "rank", "label", "class", "probability"}], "files",
    "backend", "out"}``; with ``out`` (a ``.csv``) the rows are written there too.
    """
    if top_k < 1 or batch_size < 1:
        raise DataError(f"top_k and batch_size must be at least 1, got {top_k} and {batch_size}.")
    pred = Predictor(source, trust_code)
    files = collect_images(inputs)
    rows = []
    for i in range(0, len(files), batch_size):
        chunk = files[i : i + batch_size]
        probs = pred.probs(chunk)
        k = min(top_k, probs.shape[1])
        for f, p in zip(chunk, probs):
            for rank, c in enumerate(np.argsort(-p, kind="stable")[:k], start=1):
                name = pred.class_names[c] if pred.class_names else str(int(c))
                rows.append({"file": str(f), "rank": rank, "label": int(c), "class": name,
                             "probability": float(p[c])})
    if out is not None:
        _write_csv(Path(out), rows)
    return {"rows": rows, "files": len(files), "backend": pred.backend, "out": str(out) if out else None,
            "class_names": pred.class_names is not None}


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import csv

    from .engine.checkpoint import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["file", "rank", "label", "class", "probability"], lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "probability": f"{r['probability']:.6f}"})
    atomic_write_text(path, buf.getvalue())
