"""Quantize a finished run's student into ``RUN/int8/<method>/`` and ship it as int8 ONNX.

The folder holds:

* ``quantized.safetensors``: the int8 graph's constants (int8 weights, their scales and
  zero points, biases, each activation's scale and zero point; :mod:`.store`). The int8
  model is rebuilt from the student's ``model.json`` by the same capture, prepare and
  conversion, then these constants: nothing executable is loaded from disk
  (:func:`load_int8`). Folders written before this format (the prepared graph's observer
  state) still load.
* ``model.int8.onnx``: the int8 model in ONNX's QDQ form (``QuantizeLinear`` /
  ``DequantizeLinear`` around each quantized operator; ONNX Runtime fuses them into
  integer kernels such as ``QLinearConv``), written by ``torch.onnx.export`` from the
  converted graph, and checked against the int8 PyTorch model on the test set.
* ``quantize.json``: settings, accuracy of float student / int8 / teacher on the test
  set, agreement, sizes and ONNX Runtime latency.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..atomic import atomic_write_json
from ..config import load_config, run_task
from ..engine.checkpoint import remove_litter
from ..errors import CheckpointError, ConfigError
from ..losses import kd_loss
from ..measure import summarize_times
from ..metrics import accuracy, agreement
from ..runs import load_saved, prepare_data, teacher_from_checkpoints
from ..safe_read import QuantizeRecord, read_json
from .backend import MIN_CALIB, QuantizeError, convert, prepare, quiet, torchao_pt2e
from .core import DEFAULT_CALIB, METHODS, Quantized, default_calib, quantize_model, rebuild_int8
from .isa import EXACT_FULL_RANGE, cpu_flags, full_range_exact
from .store import FORMAT, int8_state, load_int8_state

#: int8 ONNX against int8 PyTorch: ONNX Runtime accumulates in integers and requantizes,
#: PyTorch's reference graph computes in float between quantize/dequantize pairs, so
#: outputs differ by rounding; below this top-1 agreement the export is refused
MIN_INT8_AGREEMENT = 0.99
FORMAT_HINT = "int8 models export to ONNX only (QDQ form): use --format onnx"


def int8_dir(run_dir: str | Path, method: str) -> Path:
    return Path(run_dir) / "int8" / method


def _config(run_dir: Path):
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} has no config.yaml, so its training and test data cannot be rebuilt.")
    run_task(run_dir).require("quantize")  # int8 of image classifiers; another task's run says so
    return load_config(run_dir / "config.yaml")


def _teacher_fn(run_dir: Path, cfg, data, source: str, student: nn.Module,
                trust_code: bool = False) -> tuple[Callable[[Tensor], Tensor], str]:
    """Inputs -> float logits of the QAD teacher: the run's teacher or its float student."""
    if source == "student":
        frozen = student.eval()
        return (lambda x: frozen(x)), "float student"
    if source != "teacher":
        raise QuantizeError(f"Unknown QAD teacher {source!r}; choose 'teacher' (the run's) or 'student' (its float student).")
    if (run_dir / "teacher" / "model.safetensors").is_file():
        model, _ = load_saved(run_dir / "teacher", "teacher", trust_code)
        return (lambda x: model(x)), "run teacher"
    if cfg.teacher is not None:
        try:
            t = teacher_from_checkpoints(cfg.teacher, data, trust_code=trust_code,
                                         source=f"{run_dir / 'config.yaml'}")
        except ConfigError:
            t = None
        if t is not None:
            return (lambda x: t({"x": x}).logits), "run teacher (checkpoint)"
    raise QuantizeError(f"{run_dir} has no float teacher to distil from (no teacher/ folder, no teacher checkpoint "
                        "in config.yaml); pass --teacher student to distil from the float student, or use --method qat.")


@torch.no_grad()
def _logits(fn: Callable[[Tensor], Tensor | np.ndarray], data, batch_size: int) -> Tensor:
    out = []
    for b in data.batches(batch_size):
        y = fn(b["x"].float())
        out.append(torch.as_tensor(np.asarray(y) if not isinstance(y, Tensor) else y).float())
    return torch.cat(out)


def ort_session(path: Path, threads: int = 1):
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError('Running the int8 ONNX model needs onnxruntime: pip install -e ".[export]".') from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def ort_runner(session) -> Callable[[Tensor], np.ndarray]:
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy().astype(np.float32)})[0]


def ort_latency(session, input_shape: Sequence[int], batch_size: int, repeats: int = 30, warmup: int = 5) -> dict[str, float]:
    """Median, 5th and 95th percentile of ONNX Runtime CPU latency (ms) for one batch."""
    run = ort_runner(session)
    x = torch.randn((batch_size, *input_shape))
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t0) * 1e3)
    p50, p95 = summarize_times(times)
    return {"p50": p50, "p05": sorted(times)[int(0.05 * (len(times) - 1))], "p95": p95, "batch_size": batch_size,
            "repeats": repeats}


def export_onnx(model: nn.Module, input_shape: Sequence[int], path: Path) -> None:
    """``model`` (float or a converted int8 graph) as ONNX through ``torch.onnx.export``'s
    ``torch.export``-based exporter, which turns PT2E's quantize/dequantize operators into
    ONNX ``QuantizeLinear`` / ``DequantizeLinear``; input ``x``, output ``logits``, batch
    axis dynamic."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ConfigError('int8 ONNX export needs onnx and onnxscript: pip install -e ".[export]".') from None
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.randn((2, *input_shape))
    tmp = path.with_name(path.name + ".tmp")
    try:
        with quiet():
            torch.onnx.export(model, (x,), str(tmp), input_names=["x"], output_names=["logits"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False,
                              external_data=False)
    except Exception as e:  # the exporter raises many types
        tmp.unlink(missing_ok=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QuantizeError(f"ONNX export of the int8 model failed: {first[:300]}.") from None
    _strip_metadata(tmp)
    tmp.replace(path)


def _strip_metadata(path: Path) -> None:
    """Drop the exporter's per-node debug metadata (FX node text, module paths, stack
    traces): on a small student it outweighs the int8 weights, and no runtime reads it."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(model, str(path))


def _onnx_facts(path: Path) -> dict[str, Any]:
    import onnx

    g = onnx.load(str(path))
    ops: dict[str, int] = {}
    for n in g.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {"bytes": path.stat().st_size, "ops": ops,  # weights inline (external_data=False)
            "opset": max((o.version for o in g.opset_import if o.domain in ("", "ai.onnx")), default=None)}


def _float_onnx(run_dir: Path, student: nn.Module, shape) -> Path:
    """The float student as ONNX (exported once, beside the int8 folders), to compare with."""
    path = run_dir / "int8" / "model.float.onnx"
    stamp = run_dir / "model.safetensors"
    if not path.is_file() or path.stat().st_mtime < stamp.stat().st_mtime:
        export_onnx(student, shape, path)
    return path


def _plan(method: str, calib: int | None, reduce_range: bool | None, n_train: int, onnx: bool,
          log: Callable[[str], None]) -> tuple[int, bool, dict[str, Any]]:
    """Calibration size and activation range (defaults from the data and this CPU), said
    before any training, with a warning when the ONNX parity check cannot be exact here."""
    cpu = cpu_flags()
    exact = full_range_exact(cpu)
    calib = default_calib(n_train) if calib is None else int(calib)
    rr = (not exact) if reduce_range is None else bool(reduce_range)
    chosen = "default for this CPU" if reduce_range is None else "asked for"
    flags = ", ".join(cpu["flags"]) or "none of " + ", ".join(EXACT_FULL_RANGE)
    log(f"int8 {method}: {calib} calibration samples (of {n_train}; default all up to {DEFAULT_CALIB}, at least "
        f"{MIN_CALIB}); {'7-bit' if rr else '8-bit'} activations ({chosen}; CPU flags: {flags}).")
    if onnx and not rr and not exact:
        log("warning: 8-bit activations on a CPU without VNNI/AMX: ONNX Runtime's int8 kernels saturate here, so the "
            f"int8 ONNX check (at least {MIN_INT8_AGREEMENT:.0%} agreement) is expected to fail after quantizing; "
            "drop --full-range, or pass --no-onnx.")
    return calib, rr, cpu


def quantize_run(run_dir: str | Path, method: str = "ptq", *, teacher: str = "teacher", calib: int | None = None,
                 epochs: int = 2, lr: float = 1e-3, batch_size: int | None = None, alpha: float = 0.9,
                 temperature: float | None = None, keep_float: Sequence[str] = (), allow_float: bool = False,
                 seed: int = 0, reduce_range: bool | None = None, onnx: bool = True,
                 log: Callable[[str], None] = print, trust_code: bool = False) -> dict[str, Any]:
    """Quantize a run's student; writes ``RUN/int8/<method>/`` and returns its ``quantize.json``.

    ``calib`` defaults to the training set up to 512 samples; ``reduce_range`` to what is
    exact on this CPU (:mod:`.isa`). QAD's temperature defaults to the run's KD temperature
    (4 when the run used another method). ``onnx=False`` skips the ONNX files (and so the
    latency and size columns). ``trust_code`` allows the folder's records to name an
    importable model factory.
    """
    run_dir = Path(run_dir)
    if method not in METHODS:
        raise QuantizeError(f"Unknown quantization method {method!r}; choose one of {', '.join(METHODS)}.")
    for folder in (run_dir, int8_dir(run_dir, method)):  # what an interrupted quantize left
        remove_litter(folder)
    try:
        student, record = load_saved(run_dir, "student", trust_code)
    except CheckpointError as e:
        raise QuantizeError(f"Nothing to quantize: {e}") from None
    cfg = _config(run_dir)
    torchao_pt2e()
    data = prepare_data(cfg)
    calib, reduce_range, cpu = _plan(method, calib, reduce_range, len(data.train), onnx, log)
    if temperature is None:
        m = cfg.method if isinstance(cfg.method, dict) else {}
        temperature = float(m.get("temperature", 4.0)) if m.get("name") == "kd" else 4.0
    teacher_fn, teacher_name = (None, None)
    if method == "qad":
        teacher_fn, teacher_name = _teacher_fn(run_dir, cfg, data, teacher, student, trust_code)
    t0 = time.perf_counter()
    q = quantize_model(student, data.train, method, teacher=teacher_fn, calib=calib, epochs=epochs, lr=lr,
                       batch_size=int(batch_size or cfg.data.batch_size), alpha=alpha, temperature=temperature,
                       keep_float=keep_float, allow_float=allow_float, seed=seed, reduce_range=reduce_range, log=log)
    ctx = {"run_dir": run_dir, "cfg": cfg, "data": data, "student": student, "record": record,
           "trust_code": trust_code, "temperature": temperature}
    result = _record(q, ctx, method, teacher_name, time.perf_counter() - t0, cpu)
    out = int8_dir(run_dir, method)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    tmp = out / ".quantized.safetensors.tmp"
    save_file(int8_state(q.int8), str(tmp), metadata={"kdistill_int8": method, "format": FORMAT})
    tmp.replace(out / "quantized.safetensors")
    result["int8_file_bytes"] = (out / "quantized.safetensors").stat().st_size
    atomic_write_json(out / "quantize.json", result)  # kept whatever the ONNX step does
    if onnx:
        result["onnx"] = _write_onnx(run_dir, out, student, q.int8, tuple(record["input_shape"]), data.test,
                                     int(cfg.data.eval_batch_size), ctx["q_logits"], record)
        result["speed"] = speed_remark(result["onnx"]["latency_ms"], cpu)
        atomic_write_json(out / "quantize.json", result)
        log(result["speed"]["remark"])
        _check_parity(result["onnx"])
    return result


def _record(q: Quantized, ctx: dict[str, Any], method: str, teacher_name: str | None, seconds: float,
            cpu: dict[str, Any]) -> dict[str, Any]:
    """``quantize.json`` before the ONNX step: settings, test accuracies and agreements."""
    student, record, data, cfg = ctx["student"], ctx["record"], ctx["data"], ctx["cfg"]
    test, ebs = data.test, int(cfg.data.eval_batch_size)
    labels = test.labels()
    f_logits, q_logits = _logits(student, test, ebs), _logits(q.int8, test, ebs)
    ctx["q_logits"] = q_logits
    result: dict[str, Any] = {
        "method": method, "model": record["model"], "input_shape": list(record["input_shape"]),
        "num_classes": record["num_classes"], "qat_graph": method != "ptq", **q.info, "quantize_s": seconds,
        "teacher": teacher_name, "backend": f"torchao {torchao_pt2e()['version']} PT2E, X86InductorQuantizer "
        "(uint8 activations per tensor, int8 weights per channel)", "cpu": cpu,
        "test": {"samples": len(test), "acc_float": accuracy(f_logits, labels), "acc_int8": accuracy(q_logits, labels),
                 "agreement_int8_float": agreement(q_logits, f_logits)},
        "float_param_bytes": sum(t.numel() * t.element_size() for t in student.state_dict().values()),
        "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        tf, _ = _teacher_fn(ctx["run_dir"], cfg, data, "teacher", student, ctx["trust_code"])
    except QuantizeError:  # a run without a teacher: no teacher columns
        tf = None
    if tf is not None:
        t_logits, temperature = _logits(tf, test, ebs), ctx["temperature"]
        result["test"].update({
            "acc_teacher": accuracy(t_logits, labels), "agreement_int8_teacher": agreement(q_logits, t_logits),
            "agreement_float_teacher": agreement(f_logits, t_logits),
            # the distillation loss QAD lowers, at its temperature, for the float and the int8 student
            "kd_float_teacher": float(kd_loss(f_logits, t_logits, temperature)),
            "kd_int8_teacher": float(kd_loss(q_logits, t_logits, temperature)),
        })
    return result


def speed_remark(latency: dict[str, Any], cpu: dict[str, Any]) -> dict[str, Any]:
    """int8 against float ONNX Runtime latency per batch size (median ms), in words: a
    speedup where int8 is faster, a plain "slower" where it is not."""
    ratios = {b: lat["float"]["p50"] / max(lat["int8"]["p50"], 1e-9) for b, lat in latency.items()}
    parts = [f"{b.lstrip('b')}: {r:.2f}x" for b, r in ratios.items()]
    slower = [b for b, r in ratios.items() if r < 1.0]
    isa = "VNNI/AMX" if full_range_exact(cpu) else "no VNNI/AMX"
    if slower:
        remark = (f"int8 is SLOWER than float on this CPU ({isa}) at batch {', '.join(b.lstrip('b') for b in slower)}"
                  f" (float/int8 speed by batch {'; '.join(parts)}); ship the float model here, or measure on the "
                  "target device.")
    else:
        remark = f"int8 is faster than float on this CPU ({isa}): float/int8 speed by batch {'; '.join(parts)}."
    return {"speedup_by_batch": ratios, "int8_slower": bool(slower), "remark": remark}


def _write_onnx(run_dir: Path, out: Path, student, int8, shape, test, ebs, q_logits, record) -> dict[str, Any]:
    from ..export import stamp_onnx

    path = out / "model.int8.onnx"
    export_onnx(int8, shape, path)
    stamp_onnx(path, record, {"kdistill.int8": "1"})
    fpath = _float_onnx(run_dir, student, shape)
    sess, fsess = ort_session(path), ort_session(fpath)
    o_logits = _logits(ort_runner(sess), test, ebs)
    facts, ffacts = _onnx_facts(path), _onnx_facts(fpath)
    agree = agreement(o_logits, q_logits)
    entry = {
        "path": str(path), "bytes": facts["bytes"], "float_onnx_bytes": ffacts["bytes"],
        "size_ratio": ffacts["bytes"] / max(facts["bytes"], 1), "opset": facts["opset"], "ops": facts["ops"],
        "parity_int8_pytorch": {"top1_agreement": agree, "max_abs_diff": float((o_logits - q_logits).abs().max()),
                                "threshold": MIN_INT8_AGREEMENT, "passed": bool(agree >= MIN_INT8_AGREEMENT)},
        "acc_onnx": accuracy(o_logits, test.labels()),
        "latency_ms": {f"b{b}": {"int8": ort_latency(sess, shape, b), "float": ort_latency(fsess, shape, b)}
                       for b in (1, 64)},
    }
    import onnxruntime

    entry["runtime"] = f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider, 1 thread"
    return entry


def _check_parity(entry: dict[str, Any]) -> None:
    p = entry["parity_int8_pytorch"]
    if not p["passed"]:
        raise QuantizeError(f"The int8 ONNX model agrees with the int8 PyTorch model on only {p['top1_agreement']:.2%} of "
                            f"the test set (at least {MIN_INT8_AGREEMENT:.0%} required); quantize.json records it and "
                            f"the file is kept at {entry['path']}. On a CPU with VNNI, full-range activations "
                            "(--full-range) are exact; without it keep the default 7-bit range.")


def load_int8(run_dir: str | Path, method: str = "ptq", trust_code: bool = False) -> tuple[Quantized, dict[str, Any]]:
    """The int8 student saved by :func:`quantize_run`, rebuilt (no code loaded from disk)."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    folder = int8_dir(run_dir, method)
    if not (folder / "quantized.safetensors").is_file() or not (folder / "quantize.json").is_file():
        raise QuantizeError(f"{run_dir} has no {method} int8 student; run `kdistill quantize {run_dir} --method {method}` first.")
    from safetensors import safe_open

    info = read_json(folder / "quantize.json", QuantizeRecord, error=QuantizeError,
                     hint=f" Re-run `kdistill quantize {run_dir} --method {method}`.")
    student, record = load_saved(run_dir, "student", trust_code)
    path = folder / "quantized.safetensors"
    with safe_open(str(path), "pt") as f:
        fmt = (f.metadata() or {}).get("format")
    qat, keep, rr = bool(info.get("qat_graph")), info.get("keep_float") or (), bool(info.get("reduce_range", True))
    if fmt != FORMAT:  # a folder from before the compact format: the prepared graph's state
        prepared, int8 = rebuild_int8(student, record["input_shape"], load_file(str(path)), qat, keep, rr)
        return Quantized(method, int8, prepared, info), info
    example = torch.zeros((2, *record["input_shape"]))
    prepared = prepare(student, example, qat, keep, rr)
    with torch.no_grad():
        prepared(example)  # observers get a range, so the graph converts; the stored constants replace it
    int8 = load_int8_state(convert(prepared), load_file(str(path)))
    return Quantized(method, int8, prepared, info), info


def export_int8(run_dir: str | Path, method: str | None = None, format: str = "onnx",
                out: str | Path | None = None, trust_code: bool = False) -> dict[str, Any]:
    """Export a run's int8 student as ONNX, with parity against the int8 PyTorch model
    (refused below :data:`MIN_INT8_AGREEMENT`) and the float student (recorded); merges an
    ``onnx-int8-<method>`` entry into ``RUN/export.json``. ``method=None`` takes the QAD
    student if there is one, else QAT, else PTQ."""
    if format != "onnx":
        raise QuantizeError(f"{FORMAT_HINT}; {format!r} cannot hold PT2E's quantize/dequantize graph "
                            "(TorchScript is deprecated upstream and has no int8 path for it).")
    run_dir = Path(run_dir)
    if method is None:
        done = [m for m in ("qad", "qat", "ptq") if (int8_dir(run_dir, m) / "quantize.json").is_file()]
        if not done:
            raise QuantizeError(f"{run_dir} has no int8 student; run `kdistill quantize {run_dir} --method ptq` first.")
        method = done[0]
    q, info = load_int8(run_dir, method, trust_code)
    student, record = load_saved(run_dir, "student", trust_code)
    cfg = _config(run_dir)
    data = prepare_data(cfg)
    shape = tuple(record["input_shape"])
    target = Path(out) if out is not None else run_dir / "export" / f"model.int8-{method}.onnx"
    if target.is_dir():
        target = target / f"model.int8-{method}.onnx"
    t0 = time.perf_counter()
    export_onnx(q.int8, shape, target)
    from ..export import stamp_onnx

    stamp_onnx(target, record, {"kdistill.int8": method})
    ebs = int(cfg.data.eval_batch_size)
    q_logits, f_logits = _logits(q.int8, data.test, ebs), _logits(student, data.test, ebs)
    o_logits = _logits(ort_runner(ort_session(target)), data.test, ebs)
    labels = data.test.labels()
    agree = agreement(o_logits, q_logits)
    entry = {
        "format": "onnx", "int8": method, "path": str(target), "file_bytes": target.stat().st_size,
        "export_s": time.perf_counter() - t0, **{k: v for k, v in _onnx_facts(target).items() if k != "bytes"},
        "parity": {"split": "test", "samples": len(labels), "top1_agreement": agree,
                   "max_abs_diff": float((o_logits - q_logits).abs().max()), "acc_exported": accuracy(o_logits, labels),
                   "acc_int8_pytorch": accuracy(q_logits, labels)},
        "parity_float": {"top1_agreement": agreement(o_logits, f_logits), "acc_float": accuracy(f_logits, labels)},
        "threshold": MIN_INT8_AGREEMENT, "passed": bool(agree >= MIN_INT8_AGREEMENT),
        "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = run_dir / "export.json"
    try:
        existing = json.loads(path.read_text())
        existing = existing if isinstance(existing, dict) else {}
    except (OSError, ValueError, RecursionError):
        existing = {}
    existing[f"onnx-int8-{method}"] = entry
    atomic_write_json(path, existing)
    if not entry["passed"]:
        raise QuantizeError(f"The int8 ONNX export agrees with the int8 PyTorch model on only {agree:.2%} of the test "
                            f"set (at least {MIN_INT8_AGREEMENT:.0%} required); the file is kept at {target}.")
    return entry
