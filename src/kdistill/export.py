"""Ship the student: ONNX, TorchScript or safetensors, with a parity check on the test set.

Only the student leaves the run. ``model.safetensors`` holds the student's own state dict
(the run writes it from the bare student, never from the distiller), so connectors,
auxiliary heads and extra branches of a method are not in it; :func:`kdistill.runs.load_saved`
rebuilds the network from ``model.json`` and loads that file strictly, so a file with any
extra tensor is refused rather than silently carried along.

**ONNX exporter.** ``exporter="auto"`` (the default) uses PyTorch's ``torch.export``-based
exporter (``dynamo=True``, the default and the maintained path since PyTorch 2.9; it
needs ``onnxscript``) and falls back to the TorchScript-based one (``dynamo=False``,
deprecated upstream) when the first raises; ``export.json`` records which one ran. Both
work on CPU for every zoo family (checked with torch 2.13, onnxscript 0.7, onnxruntime
1.32). The new one is the default because the old one is slated for removal; it is
slower (about 0.5-3 s for a small student, 10-30 s for a deep CNN on two busy cores,
against under 2 s). Both fold an eval-mode BatchNorm into the convolution before it,
so an exported graph may hold fewer tensors than the state dict. The batch axis is dynamic
(named ``batch``); everything else is fixed to the run's input shape. Weights are stored
inside the ``.onnx`` file, which suits students far below ONNX's 2 GB protobuf limit;
larger models get an external ``.onnx.data`` file beside it.

**What travels with it.** Every artifact carries the run's input contract (how a photo
becomes the input tensor: :mod:`kdistill.data.contract`) and class names: an ONNX file in
its ``metadata_props`` (keys ``kdistill.preprocess``, ``kdistill.class_names``,
``kdistill.model``, ``kdistill.num_classes``, ``kdistill.input_shape``; JSON values), a
TorchScript file as the extra file ``kdistill.json`` (the whole ``model.json`` record), a
safetensors export in its ``model.json``; ``export.json`` repeats both. Each format is one
writer in :data:`WRITERS`; another format (or a task's own export path) is one more entry.

**Parity.** The exported model is reloaded from disk (ONNX Runtime on CPU,
``torch.jit.load``, or the safetensors file rebuilt from ``model.json``) and run on the
run's whole test set, rebuilt from ``config.yaml``, next to the PyTorch student in eval
mode. ``export.json`` records the largest absolute logit difference and the top-1
agreement; below 99.9% agreement (the project's acceptance bar for a shipped student:
at most one flipped prediction in a thousand) the export fails with :class:`ParityError`.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .config import load_config
from .data import Dataset
from .errors import CheckpointError, ConfigError, KdistillError, ShapeError
from .runs import load_saved, prepare_data

FORMATS = ("onnx", "torchscript", "safetensors")  # and "onnx-baked": ONNX with the preprocessing inside
EXPORTERS = ("auto", "dynamo", "legacy")
#: below this top-1 agreement with the PyTorch student an export is refused
MIN_AGREEMENT = 0.999
INSTALL_HINT = 'pip install -e ".[export]"'
DEFAULT_NAMES = {"onnx": "model.onnx", "onnx-baked": "model.baked.onnx", "torchscript": "model.torchscript.pt",
                 "safetensors": "safetensors"}
# ONNX stores the graph in one protobuf, capped at 2 GiB; keep a margin for the graph itself
_EXTERNAL_DATA_BYTES = 1_500_000_000


class ParityError(KdistillError):
    """The exported model does not reproduce the PyTorch student."""

    exit_code = 4


# -- exporters ------------------------------------------------------------------------------
def _require(module: str, purpose: str):
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"{purpose} needs the {module} package, which is not installed: {INSTALL_HINT}.") from None


@contextmanager
def _quiet_export():
    """Silence the exporters' deprecation warnings and registry chatter (not errors)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.onnx._internal.exporter._registration")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _example(input_shape: tuple[int, ...], example: Tensor | None) -> Tensor:
    # batch 2: torch.export specialises a batch of size 1 to a constant
    if example is not None and example.shape[0] >= 2:
        return example[:2].cpu() if not example.is_floating_point() else example[:2].float().cpu()
    return torch.randn((2, *input_shape))


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path, exporter: str = "auto",
                example: Tensor | None = None, names: tuple[str, str] = ("x", "logits")) -> str:
    """Write ``model`` to ``path`` as ONNX with input ``x`` and output ``logits`` (or ``names``),
    batch axis dynamic.

    Returns the exporter that produced the file (``"dynamo"`` or ``"legacy"``; see the
    module docstring for the choice).
    """
    if exporter not in EXPORTERS:
        raise ConfigError(f"Unknown ONNX exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}.")
    _require("onnx", "ONNX export")
    model = model.cpu().float().eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = _example(tuple(input_shape), example)
    external = sum(t.numel() * t.element_size() for t in model.state_dict().values()) > _EXTERNAL_DATA_BYTES
    errors = []
    order = ["dynamo", "legacy"] if exporter == "auto" else [exporter]
    for kind in order:
        try:
            with _quiet_export():
                if kind == "dynamo":
                    torch.onnx.export(
                        model, (x,), str(path), input_names=[names[0]], output_names=[names[1]],
                        dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                        external_data=external, verbose=False,
                    )
                else:
                    torch.onnx.export(
                        model, (x,), str(path), input_names=[names[0]], output_names=[names[1]],
                        dynamic_axes={names[0]: {0: "batch"}, names[1]: {0: "batch"}}, dynamo=False,
                    )
            return kind
        except Exception as e:  # exporters raise many types; the message is what matters
            errors.append(f"{kind}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")
    raise ShapeError(
        f"ONNX export of the model failed ({'; '.join(errors)}). Try another format "
        "(--format torchscript or safetensors)."
    )


def export_torchscript(model: nn.Module, input_shape: tuple[int, ...], path: str | Path,
                       example: Tensor | None = None) -> None:
    """Trace ``model`` with an example batch and save it with ``torch.jit.save``.

    TorchScript is deprecated upstream (PyTorch 2.9+) but still loads in C++ (libtorch)
    without Python; tracing records the operations run on the example, so data-dependent
    control flow is frozen to the example's path (the zoo models have none).
    """
    model = model.cpu().float().eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_export(), torch.no_grad():
        try:
            traced = torch.jit.trace(model, _example(tuple(input_shape), example), check_trace=False)
        except Exception as e:  # tracing errors come as RuntimeError, TracingCheckError, ...
            raise ShapeError(f"TorchScript tracing failed: {str(e).strip().splitlines()[0]}. "
                             "Try --format onnx or safetensors.") from None
        torch.jit.save(traced, str(path))


def onnx_session(path: str | Path, device: str = "cpu", threads: int | None = None):
    """An ONNX Runtime session on CPU (or CUDA when available and asked for)."""
    ort = _require("onnxruntime", "Running an ONNX model")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types
        raise CheckpointError(f"ONNX Runtime cannot load {path}: {str(e).strip().splitlines()[0]}") from None


# -- parity ----------------------------------------------------------------------------------
@torch.no_grad()
def batched_logits(fn: Callable[[Tensor], Tensor | np.ndarray], data: Dataset, batch_size: int) -> Tensor:
    """``fn`` applied to every input of ``data`` in batches, as one float32 CPU tensor."""
    outs = []
    for batch in data.batches(batch_size):
        out = fn(batch["x"])
        outs.append(torch.as_tensor(np.asarray(out) if not isinstance(out, Tensor) else out).float().cpu())
    return torch.cat(outs)


@torch.no_grad()
def _scores(fn: Callable[[dict[str, Tensor]], Any], data: Dataset, batch_size: int) -> Tensor:
    """``fn`` applied to every test batch (the whole batch dict), as one float32 CPU tensor."""
    outs = [torch.as_tensor(np.asarray(o) if not isinstance(o := fn(b), Tensor) else o).float().cpu()
            for b in data.batches(batch_size)]
    return torch.cat(outs)


def parity(reference: Tensor, exported: Tensor, labels: Tensor | None = None) -> dict[str, Any]:
    """Max / mean absolute logit difference, top-1 agreement and (with labels) both accuracies."""
    diff = (reference - exported).abs()
    out = {
        "samples": int(reference.shape[0]),
        "max_abs_diff": float(diff.max()) if diff.numel() else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.numel() else 0.0,
        "top1_agreement": float((reference.argmax(1) == exported.argmax(1)).float().mean()),
    }
    if labels is not None:
        keep = labels >= 0
        if keep.any():
            out["acc_pytorch"] = float((reference.argmax(1)[keep] == labels[keep]).float().mean())
            out["acc_exported"] = float((exported.argmax(1)[keep] == labels[keep]).float().mean())
    return out


def _test_set(run_dir: Path, record: dict[str, Any]):
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"{run_dir} has no config.yaml, so its test set cannot be rebuilt for the parity check.")
    cfg = load_config(cfg_path)
    data = prepare_data(cfg)
    if tuple(data.input_shape) != tuple(record["input_shape"]):
        raise ShapeError(
            f"The run's dataset now gives inputs of shape {tuple(data.input_shape)}, but the student was "
            f"saved for {tuple(record['input_shape'])}; check config.yaml's data section."
        )
    return cfg, data.test


def _merge_export_json(run_dir: Path, fmt: str, entry: dict[str, Any]) -> None:
    from .atomic import atomic_write_json

    path = run_dir / "export.json"
    try:
        existing = json.loads(path.read_text())
        if not isinstance(existing, dict):
            existing = {}
    except (OSError, ValueError, RecursionError):
        existing = {}
    existing[fmt] = entry
    atomic_write_json(path, existing)


def _onnx_metadata(record: dict[str, Any]) -> dict[str, str]:
    """What an ONNX file carries in ``metadata_props``: the model, its input contract and
    class names (JSON strings; readable with ``session.get_modelmeta().custom_metadata_map``)."""
    meta = {"kdistill.model": str(record.get("model")), "kdistill.num_classes": str(record.get("num_classes")),
            "kdistill.input_shape": json.dumps(record.get("input_shape"))}
    if record.get("preprocess"):
        meta["kdistill.preprocess"] = json.dumps(record["preprocess"])
    if record.get("class_names"):
        meta["kdistill.class_names"] = json.dumps(record["class_names"])
    return meta


def stamp_onnx(path: Path, record: dict[str, Any], extra: dict[str, str] | None = None) -> None:
    """Write the record's metadata (:func:`_onnx_metadata`) into the ONNX file at ``path``."""
    import onnx

    external = path.with_name(path.name + ".data").is_file()
    graph = onnx.load(str(path), load_external_data=external)
    old = {p.key: p.value for p in graph.metadata_props}
    del graph.metadata_props[:]
    onnx.helper.set_model_props(graph, {**old, **_onnx_metadata(record), **(extra or {})})
    if external:
        onnx.save(graph, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save(graph, str(path))


def _onnx_facts(target: Path) -> dict[str, Any]:
    import onnx

    graph = onnx.load(str(target), load_external_data=False)
    return {"opset": max((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), default=None),
            "initializers": len(graph.graph.initializer),
            "metadata_props": sorted(p.key for p in graph.metadata_props)}


def _write_onnx(model: nn.Module, record: dict[str, Any], target: Path, ctx: dict[str, Any]):
    import onnxruntime

    if target.exists():
        target.unlink()
    entry = {"exporter": export_onnx(model, tuple(record["input_shape"]), target, ctx["exporter"], ctx["example"])}
    stamp_onnx(target, record)
    entry.update(_onnx_facts(target))
    session = onnx_session(target)
    name = session.get_inputs()[0].name
    entry["runtime"] = f"onnxruntime {onnxruntime.__version__} {session.get_providers()[0]}"
    return _on_x(lambda xb: session.run(None, {name: xb.numpy()})[0]), entry, None


class BakedPreprocess(nn.Module):
    """The student with the image contract's crop and normalisation in front and a softmax
    behind: uint8 ``(N, resize, resize, C)`` pixels (the decoded square, channels last) in,
    class probabilities out (``kdistill export --bake-preprocess``)."""

    def __init__(self, model: nn.Module, contract: dict[str, Any]):
        super().__init__()
        self.model, self.size, self.load = model, int(contract["size"]), int(contract["resize"])
        self.register_buffer("mean", torch.tensor(contract["mean"], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(contract["std"], dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, image: Tensor) -> Tensor:
        x = image.permute(0, 3, 1, 2).float() / 255.0
        top = int(round((self.load - self.size) / 2.0))  # the center crop of data.recipe.center_crop
        x = x[:, :, top : top + self.size, top : top + self.size]
        return torch.softmax(self.model((x - self.mean) / self.std), dim=1)


def _write_onnx_baked(model: nn.Module, record: dict[str, Any], target: Path, ctx: dict[str, Any]):
    import onnxruntime

    contract, test = record.get("preprocess") or {}, ctx["test"]
    if contract.get("kind") != "image" or not hasattr(test, "pixels"):
        raise ConfigError("--bake-preprocess needs a run on image files (its model.json records an image input "
                          "contract); this run's inputs are arrays: export it without --bake-preprocess.")
    baked = BakedPreprocess(model, contract).eval()
    example = test.pixels([0, min(1, len(test) - 1)]).permute(0, 2, 3, 1).contiguous()
    if target.exists():
        target.unlink()
    entry = {"exporter": export_onnx(baked, tuple(example.shape[1:]), target, ctx["exporter"], example,
                                     ("image", "probs")),
             "input": f"uint8 (N, {contract['resize']}, {contract['resize']}, {contract['channels']}) "
                      f"{contract['channel_order']} pixels: the decoded square (module kdistill.data.contract)",
             "output": "class probabilities (softmax)"}
    stamp_onnx(target, record, {"kdistill.baked": "1"})
    entry.update(_onnx_facts(target))
    session = onnx_session(target)
    entry["runtime"] = f"onnxruntime {onnxruntime.__version__} {session.get_providers()[0]}"

    def run(batch: dict[str, Tensor]):
        px = test.pixels(batch["index"].tolist()).permute(0, 2, 3, 1).contiguous().numpy()
        return session.run(None, {"image": px})[0]

    return run, entry, (lambda batch: torch.softmax(model(batch["x"]), dim=1))


def _on_x(fn: Callable[[Tensor], Any]) -> Callable[[dict[str, Tensor]], Any]:
    return lambda batch: fn(batch["x"])


def _write_torchscript(model: nn.Module, record: dict[str, Any], target: Path, ctx: dict[str, Any]):
    export_torchscript(model, tuple(record["input_shape"]), target, ctx["example"])
    with _quiet_export():  # the record rides along as an extra file: torch.jit.load(_extra_files={"kdistill.json": ""})
        loaded = torch.jit.load(str(target), map_location="cpu").eval()
        torch.jit.save(loaded, str(target), _extra_files={"kdistill.json": json.dumps(record)})
    return _on_x(loaded), {"runtime": f"torch.jit {torch.__version__}", "extra_files": ["kdistill.json"]}, None


def _write_safetensors(model: nn.Module, record: dict[str, Any], target: Path, ctx: dict[str, Any]):
    from safetensors.torch import save_file

    from .engine.checkpoint import atomic_write_json, state_dict_tensors

    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target} exists and is not a folder; a safetensors export writes a folder.")
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / ".model.safetensors.tmp"
    save_file(state_dict_tensors(model), str(tmp), metadata={"format": "pt", "kdistill_model": record["model"]})
    tmp.replace(target / "model.safetensors")
    atomic_write_json(target / "model.json", record)
    runner, _ = load_saved(target, "exported student", ctx["trust_code"])
    return _on_x(runner), {"runtime": f"torch {torch.__version__} (rebuilt from model.json)"}, None


#: format -> writer(model, record, target, ctx) -> (runner on a test batch, entry fields,
#: reference on a test batch or None for the student's logits); ctx holds ``exporter``,
#: ``example``, ``trust_code`` and ``test``. A new format (or a task's own path) is one more entry
WRITERS: dict[str, Callable[..., tuple[Callable[[dict], Any], dict[str, Any], Callable[[dict], Any] | None]]] = {
    "onnx": _write_onnx, "onnx-baked": _write_onnx_baked, "torchscript": _write_torchscript,
    "safetensors": _write_safetensors}


def _target(run_dir: Path, format: str, out: str | Path | None) -> Path:
    target = Path(out) if out is not None else run_dir / "export" / DEFAULT_NAMES[format]
    if format != "safetensors" and target.is_dir():
        target = target / DEFAULT_NAMES[format]
    return target


def _check_parity(entry: dict[str, Any], ref: Tensor, got: Tensor, test: Dataset, meta: dict[str, Any]) -> None:
    """Fill ``entry``'s parity fields from the PyTorch (``ref``) and exported (``got``) logits."""
    if got.shape != ref.shape:
        raise ShapeError(f"The exported model gives logits of shape {tuple(got.shape)}, PyTorch {tuple(ref.shape)}.")
    entry["parity"] = {**meta, **parity(ref, got, test.labels())}
    entry["threshold"] = MIN_AGREEMENT
    agreement = entry["parity"]["top1_agreement"]
    entry["passed"] = bool(agreement >= MIN_AGREEMENT and np.isfinite(entry["parity"]["max_abs_diff"]))


def export_run(run_dir: str | Path, format: str = "onnx", out: str | Path | None = None,
               exporter: str = "auto", batch_size: int | None = None, trust_code: bool = False) -> dict[str, Any]:
    """Export a finished run's student and check it against PyTorch on the test set.

    Args:
        run_dir: the run folder (``model.safetensors``, ``model.json``, ``config.yaml``).
        format: ``"onnx"``, ``"torchscript"`` or ``"safetensors"`` (a fresh
            ``model.safetensors`` + ``model.json`` pair in a folder of its own); see :data:`WRITERS`.
        out: output file (a folder for safetensors); default ``run_dir/export/``.
        exporter: ONNX exporter, ``"auto"``, ``"dynamo"`` or ``"legacy"``.
        batch_size: parity-check batch size (default: the run's ``eval_batch_size``).
        trust_code: allow the folder's ``model.json`` to name an importable model factory.

    Returns:
        The entry written under ``format`` in ``run_dir/export.json`` (with the run's input
        contract ``preprocess`` and ``class_names``, which the artifact carries too).

    Raises:
        ParityError: top-1 agreement below :data:`MIN_AGREEMENT` (the files stay, for
            inspection, and ``export.json`` records ``"passed": false``).
    """
    if format not in WRITERS:
        raise ConfigError(f"Unsupported export format {format!r}; choose one of: {', '.join(FORMATS)}.")
    if exporter not in EXPORTERS:
        raise ConfigError(f"Unknown ONNX exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}.")
    run_dir = Path(run_dir)
    model, record = load_saved(run_dir, "student", trust_code)
    if format.startswith("onnx"):
        _require("onnxruntime", "Checking an ONNX export")
        _require("onnx", "ONNX export")
    cfg, test = _test_set(run_dir, record)
    bs = int(batch_size or cfg.data.eval_batch_size)
    target = _target(run_dir, format, out)
    t0 = time.perf_counter()
    entry: dict[str, Any] = {"format": format, "path": str(target), "model": record["model"],
                             "input_shape": list(record["input_shape"]), "num_classes": record["num_classes"],
                             "params": sum(p.numel() for p in model.parameters()),
                             "student_tensors": len(model.state_dict()),
                             "preprocess": record.get("preprocess"), "class_names": record.get("class_names")}
    ctx = {"exporter": exporter, "example": test.example(2), "trust_code": trust_code, "test": test}
    runner, fields, reference = WRITERS[format](model, record, target, ctx)
    entry.update(fields)
    entry["file_bytes"] = _size(target)
    entry["export_s"] = time.perf_counter() - t0
    with torch.no_grad():
        ref, got = _scores(reference or _on_x(model), test, bs), _scores(runner, test, bs)
    _check_parity(entry, ref, got, test, {"dataset": cfg.data.name, "split": "test", "batch_size": bs})
    entry["torch"] = torch.__version__
    entry["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _merge_export_json(run_dir, format, entry)
    if not entry["passed"]:
        p = entry["parity"]
        raise ParityError(
            f"The {format} export of {run_dir} agrees with the PyTorch student on only {p['top1_agreement']:.2%} of "
            f"the {p['samples']} test samples (max |logit difference| {p['max_abs_diff']:.3g}); at least "
            f"{MIN_AGREEMENT:.1%} is required. The file is kept at {target} for inspection; try another exporter "
            "or format.")
    return entry


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    extra = path.with_name(path.name + ".data")
    return path.stat().st_size + (extra.stat().st_size if extra.is_file() else 0)
