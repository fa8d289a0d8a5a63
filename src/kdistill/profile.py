"""Model size and speed: parameters, bytes, FLOPs and latency, for one model or a run.

What is measured, and how:

* **params**: elements of ``model.parameters()``.
* **bytes**: ``param_bytes`` counts parameters and buffers as stored in memory;
  ``file_bytes`` is the size of the model's safetensors file on disk (header included),
  the number that a deployment actually ships.
* **FLOPs per sample**: :class:`torch.utils.flop_counter.FlopCounterMode` on one forward
  pass at batch 1, in eval mode. It counts 2 FLOPs per multiply-add of matmul,
  convolution and attention kernels and nothing for element-wise ops (activations,
  BatchNorm in eval, pooling). fvcore, ptflops and many papers' "FLOPs" columns count
  multiply-adds (MACs) instead: half this number.
* **latency**: wall-clock time of one forward pass on random inputs, at batch 1 (on-line
  serving) and 64 (batch scoring). All models of a profile (teacher members, student) are
  timed *interleaved* (:func:`kdistill.measure.interleaved`): after ``warmup`` untimed
  passes each, rounds in which every model takes its turn, so a change in load hits all
  alike; up to ``repeats`` rounds (3 to 15), stopping once ``seconds`` have passed for that
  backend and batch size, so a tiny model takes seconds. Per row: ``p50`` (median of the
  round medians), ``p05``/``p95``, ``spread_pct`` (interquartile range of round medians) and
  ``others_load_pct`` (CPU share other processes took meanwhile, from ``/proc/stat``). A
  row whose spread exceeds 30% or whose machine was more than half busy with other work is
  ``reliable: false``: the table marks it and prints no teacher/student ratio for it
  (``compare`` keeps the raw number apart, under ``speedup_p50_unreliable``). PyTorch runs in eval mode under
  ``torch.no_grad``; ONNX Runtime runs the exported graph with
  ``intra_op_num_threads`` set to PyTorch's thread count so the two compare on the same
  cores (``threads`` sets both; on a busy machine one thread gives the steadiest
  numbers). CUDA timings synchronize before and after each pass; ONNX Runtime's CUDA
  timings include the copies of inputs and outputs between host and device.

:func:`profile_run` profiles a run's student and teacher side by side and writes
``profile.json``; compression and speed-up ratios are teacher / student (above 1 means
the student is smaller or faster).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, DataError
from .measure import BUSY_OTHERS, BUSY_SPREAD, count_params, interleaved, latency_ms, param_bytes, summarize_times  # noqa: F401
from .runs import load_saved, rebuild
from .safe_read import ResultsRecord, read_json

# Defaults: batch 1 is on-line serving, 64 a typical scoring batch; 10 warm-up passes let
# allocators and ONNX Runtime's arena settle, 50 timed passes keep p95 meaningful.
BATCH_SIZES = (1, 64)
WARMUP = 10
REPEATS = 50
#: seconds of timing per backend, device and batch size (all models together)
SECONDS = 1.0


def ort_latency_ms(
    session: Any,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    repeats: int = 50,
    warmup: int = 10,
) -> dict[str, float]:
    """Like :func:`latency_ms` for an ONNX Runtime ``InferenceSession``."""
    import numpy as np

    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch_size, *input_shape)).astype(np.float32)
    for _ in range(warmup):
        session.run(None, {name: x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1e3)
    p50, p95 = summarize_times(times)
    opts = session.get_session_options()
    return {
        "p50": p50,
        "p95": p95,
        "batch_size": batch_size,
        "repeats": repeats,
        "threads": opts.intra_op_num_threads,
    }


@torch.no_grad()
def flops_per_sample(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass at batch 1 (2 per multiply-add; see module docstring)."""
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros((1, *input_shape), device=device))
    model.train(was)
    return int(counter.get_total_flops())


def safetensors_bytes(model: nn.Module) -> int:
    """Size in bytes of ``model``'s state dict written as a safetensors file."""
    from safetensors.torch import save

    from .engine.checkpoint import state_dict_tensors

    return len(save(state_dict_tensors(model)))


def _onnx_providers(device: str) -> list[str] | None:
    import onnxruntime as ort

    want = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    if want not in ort.get_available_providers():
        return None
    return [want] if device == "cpu" else [want, "CPUExecutionProvider"]


def _sizes(model: nn.Module, input_shape: tuple[int, ...], name: str, file_bytes: int | None) -> dict[str, Any]:
    return {"name": name, "params": count_params(model), "param_bytes": param_bytes(model),
            "file_bytes": int(file_bytes) if file_bytes is not None else safetensors_bytes(model),
            "flops_per_sample": flops_per_sample(model, input_shape), "latency_ms": {}}


def profile_model(
    model: nn.Module,
    input_shape: Sequence[int],
    name: str = "model",
    file_bytes: int | None = None,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    repeats: int = REPEATS,
    warmup: int = WARMUP,
    onnx: bool = True,
    cuda: bool | None = None,
    seconds: float = SECONDS,
) -> dict[str, Any]:
    """Size, FLOPs and latency of one model.

    Args:
        model: the network (moved to CPU and set to eval mode).
        input_shape: one sample's shape, channels first.
        name: shown in tables.
        file_bytes: size of its safetensors file; measured by serialising when None.
        batch_sizes: batch sizes to time.
        repeats, warmup, seconds: at most ``repeats`` rounds (3..15), untimed passes, and
            the time bound per backend and batch size (see the module docstring).
        onnx: also time the model exported to ONNX in ONNX Runtime (skipped, with the
            reason recorded, when onnx/onnxruntime are missing or the export fails).
        cuda: also time on CUDA; default when a GPU is available.

    Returns:
        ``{"name", "params", "param_bytes", "file_bytes", "flops_per_sample",
        "latency_ms": {"<backend>/<device>/b<batch>": {"p50", "p95", "reliable", ...}}, "onnx"}``.
    """
    input_shape = tuple(int(s) for s in input_shape)
    model = model.cpu().float().eval()
    out = _sizes(model, input_shape, name, file_bytes)
    lat, note = time_models({name: model}, input_shape, batch_sizes, repeats, warmup, onnx, cuda, seconds)
    out["latency_ms"], out["onnx"] = lat[name], note
    return out


def time_models(models: dict[str, nn.Module], input_shape: tuple[int, ...], batch_sizes: Sequence[int] = BATCH_SIZES,
                repeats: int = REPEATS, warmup: int = WARMUP, onnx: bool = True, cuda: bool | None = None,
                seconds: float = SECONDS) -> tuple[dict[str, dict[str, Any]], str]:
    """Latency of every model in ``models``, interleaved per backend, device and batch size:
    ``({name: {key: stats}}, what ONNX Runtime did)``."""
    devices = ["cpu"] + (["cuda"] if (torch.cuda.is_available() if cuda is None else cuda) else [])
    lat: dict[str, dict[str, Any]] = {n: {} for n in models}
    rounds = max(3, min(15, int(repeats)))
    threads = torch.get_num_threads()

    def fill(key: str, runners: dict[str, Any], sync=None) -> None:
        for n, st in interleaved(runners, seconds, warmup, rounds, sync=sync).items():
            lat[n][key] = {**st, "batch_size": int(key.rsplit("b", 1)[1]), "threads": threads}

    for dev in devices:
        sync = torch.cuda.synchronize if dev == "cuda" else None
        for b in batch_sizes:
            x = torch.randn((b, *input_shape), device=dev)
            with torch.no_grad():
                fill(f"pytorch/{dev}/b{b}", {n: (lambda m=m.to(dev), x=x: m(x)) for n, m in models.items()}, sync)
        for m in models.values():
            m.cpu()
    note = _time_onnx(models, input_shape, devices, batch_sizes, fill) if onnx else "off"
    return lat, note


def _time_onnx(models: dict[str, nn.Module], input_shape, devices, batch_sizes, fill) -> str:
    """Time the models' ONNX exports in ONNX Runtime; returns what was done or why it was skipped."""
    try:
        import onnxruntime as ort
    except ImportError:
        return 'skipped: onnxruntime is not installed (pip install -e ".[export]")'
    import numpy as np

    from .errors import KdistillError
    from .export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        paths, exporters = {}, set()
        for i, (n, m) in enumerate(models.items()):
            paths[n] = Path(tmp) / f"m{i}.onnx"
            try:
                exporters.add(export_onnx(m, input_shape, paths[n]))
            except KdistillError as e:
                return f"skipped: {e}"
        timed = []
        for dev in devices:
            providers = _onnx_providers(dev)
            if providers is None:
                continue
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            sessions = {n: ort.InferenceSession(str(p), sess_options=opts, providers=providers) for n, p in paths.items()}
            for b in batch_sizes:
                x = np.random.default_rng(0).standard_normal((b, *input_shape)).astype(np.float32)
                fill(f"onnxruntime/{dev}/b{b}", {n: (lambda s=s, x=x: s.run(None, {s.get_inputs()[0].name: x}))
                                                 for n, s in sessions.items()})
            timed.append(dev)
    return f"onnxruntime {ort.__version__} on {', '.join(timed)} (exporter: {', '.join(sorted(exporters))})"


def compare(teacher: dict[str, Any], student: dict[str, Any]) -> dict[str, Any]:
    """Teacher / student ratios: compression (params, bytes, FLOPs) and speed-up per latency."""

    def ratio(a: float, b: float) -> float:
        return a / b if b else math.inf

    both = {k: (teacher["latency_ms"][k], v) for k, v in student["latency_ms"].items() if k in teacher["latency_ms"]}
    ok = {k for k, (t, s) in both.items() if t.get("reliable", True) and s.get("reliable", True)}
    return {
        "params_ratio": ratio(teacher["params"], student["params"]),
        "bytes_ratio": ratio(teacher["file_bytes"], student["file_bytes"]),
        "flops_ratio": ratio(teacher["flops_per_sample"], student["flops_per_sample"]),
        # a ratio only where both rows were steady on a machine not busy with other work
        "speedup_p50": {k: ratio(t["p50"], s["p50"]) for k, (t, s) in both.items() if k in ok},
        "speedup_p50_unreliable": {k: ratio(t["p50"], s["p50"]) for k, (t, s) in both.items() if k not in ok},
    }


def _settings(batch_sizes: Sequence[int], repeats: int, warmup: int) -> dict[str, Any]:
    return {
        "batch_sizes": list(batch_sizes),
        "repeats": repeats,
        "warmup": warmup,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_count": os.cpu_count(),
    }


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op threads (PyTorch, and ONNX Runtime via :func:`profile_model`)."""
    before = torch.get_num_threads()
    if n:
        if n < 1:
            from .errors import ConfigError

            raise ConfigError(f"threads must be at least 1, got {n}.")
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _teacher_sources(run_dir: Path, trust_code: bool = False) -> list[tuple[str, nn.Module, int]]:
    """``(name, model, file_bytes)`` of each teacher member the run folder can rebuild."""
    sub = run_dir / "teacher"
    if (sub / "model.json").is_file() and (sub / "model.safetensors").is_file():
        model, rec = load_saved(sub, what="teacher", trust_code=trust_code)
        return [(f"teacher {rec['model']}", model, (sub / "model.safetensors").stat().st_size)]
    try:
        record = read_json(run_dir / "results.json", ResultsRecord).get("teacher") or {}
    except (OSError, DataError):
        return []
    members = record.get("ensemble") or ([record] if record.get("model") else [])
    found = []
    for i, rec in enumerate(members):
        ckpt = rec.get("checkpoint")
        if not ckpt:
            continue
        path = Path(ckpt)
        if not path.exists() and (run_dir / ckpt).exists():
            path = run_dir / ckpt
        if not path.exists():
            raise CheckpointError(
                f"The teacher checkpoint {ckpt!r} named in {run_dir / 'results.json'} is missing; "
                "put it back or profile the student alone with --no-teacher."
            )
        model = rebuild(rec, path, "teacher", trust_code=trust_code, source=run_dir / "results.json")
        size = path.stat().st_size if path.suffix == ".safetensors" else safetensors_bytes(model)
        label = f"teacher {rec['model']}" if len(members) == 1 else f"teacher member {i} {rec['model']}"
        found.append((label, model, size))
    return found


def _sum_members(members: list[dict[str, Any]]) -> dict[str, Any]:
    """An ensemble as one teacher: sizes, FLOPs and (sequential) latencies add up."""
    if len(members) == 1:
        return members[0]
    total = {
        "name": f"teacher ensemble of {len(members)}",
        **{k: sum(m[k] for m in members) for k in ("params", "param_bytes", "file_bytes", "flops_per_sample")},
        "latency_ms": {},
        "onnx": members[0]["onnx"],
        "members": members,
    }
    for key in members[0]["latency_ms"]:
        if all(key in m["latency_ms"] for m in members):
            base = dict(members[0]["latency_ms"][key])
            base["p50"] = sum(m["latency_ms"][key]["p50"] for m in members)
            base["p95"] = sum(m["latency_ms"][key]["p95"] for m in members)
            base["reliable"] = all(m["latency_ms"][key].get("reliable", True) for m in members)
            total["latency_ms"][key] = base
    return total


def profile_run(
    run_dir: str | Path,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    repeats: int = REPEATS,
    warmup: int = WARMUP,
    onnx: bool = True,
    teacher: bool = True,
    write: bool = True,
    threads: int | None = None,
    trust_code: bool = False,
    seconds: float = SECONDS,
) -> dict[str, Any]:
    """Profile a run's student and, when the folder can rebuild it, its teacher.

    The teacher comes from ``run_dir/teacher/`` (trained in the run) or from the
    checkpoint named in ``results.json``'s teacher record (an ensemble counts as the sum
    of its members). Student and teacher members are timed interleaved (module
    docstring). Writes ``run_dir/profile.json`` when ``write``. ``threads`` sets the
    intra-op thread count for the measurement (default: PyTorch's current one).
    ``trust_code`` allows the folder's records to name an importable model factory.
    """
    with _threads(threads):
        return _profile_run(Path(run_dir), batch_sizes, repeats, warmup, onnx, teacher, write, trust_code, seconds)


def _profile_run(run_dir: Path, batch_sizes, repeats, warmup, onnx, teacher, write, trust_code=False,
                 seconds: float = SECONDS) -> dict[str, Any]:
    from .atomic import atomic_write_json

    student, record = load_saved(run_dir, what="student", trust_code=trust_code)
    shape = tuple(record["input_shape"])
    s_name = f"student {record['model']}"
    members = _teacher_sources(run_dir, trust_code) if teacher else []
    models = {s_name: student, **{label: m.cpu().float().eval() for label, m, _ in members}}
    lat, note = time_models(models, shape, batch_sizes, repeats, warmup, onnx, None, seconds)
    s = _sizes(student, shape, s_name, (run_dir / "model.safetensors").stat().st_size)
    s.update(latency_ms=lat[s_name], onnx=note)
    result: dict[str, Any] = {"run_dir": str(run_dir), "input_shape": list(shape),
                              "settings": _settings(batch_sizes, repeats, warmup) | {"seconds": seconds},
                              "student": s, "teacher": None}
    if members:
        profiled = [_sizes(m, shape, label, size) | {"latency_ms": lat[label], "onnx": note} for label, m, size in members]
        result["teacher"] = _sum_members(profiled)
        result["compare"] = compare(result["teacher"], result["student"])
    if write:
        atomic_write_json(run_dir / "profile.json", result)
    return result


def profile_zoo_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    kwargs: dict[str, Any] | None = None,
    batch_sizes: Sequence[int] = BATCH_SIZES,
    repeats: int = REPEATS,
    warmup: int = WARMUP,
    onnx: bool = True,
    threads: int | None = None,
    seconds: float = SECONDS,
) -> dict[str, Any]:
    """Profile a freshly initialised model by name (``kdistill profile --model NAME``)."""
    from .models import create_model

    model = create_model(name, num_classes, tuple(input_shape), **(kwargs or {}))
    with _threads(threads):
        return {
            "input_shape": list(input_shape),
            "settings": _settings(batch_sizes, repeats, warmup) | {"seconds": seconds},
            "student": profile_model(model, input_shape, name, None, batch_sizes, repeats, warmup, onnx,
                                     seconds=seconds),
            "teacher": None,
        }


def _human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:g}{unit}"


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    cell = f"{row['p50']:.3f} / {row['p95']:.3f}"
    return cell if row.get("reliable", True) else cell + " !"


def unreliable_reason(row: dict[str, Any]) -> str:
    """Why a latency row is flagged, in words."""
    why = []
    if row.get("spread_pct") is not None and row["spread_pct"] > 100 * BUSY_SPREAD:
        why.append(f"spread {row['spread_pct']:.0f}%")
    if row.get("others_load_pct") is not None and row["others_load_pct"] > 100 * BUSY_OTHERS:
        why.append(f"other processes used {row['others_load_pct']:.0f}% of the CPU")
    if row.get("busy"):
        why.append("busy")
    return ", ".join(why) or "unsteady"


def profile_table(result: dict[str, Any]):
    """A Rich table of :func:`profile_run` / :func:`profile_zoo_model` output; a latency row
    measured on a busy or unsteady machine is marked and gets no ratio."""
    from rich.table import Table

    s, t, c = result["student"], result.get("teacher"), result.get("compare")
    cols = [x for x in (t, s) if x]
    st = result.get("settings", {})
    table = Table(title=(
        f"profile, input {tuple(result['input_shape'])}: latency p50 / p95 in ms, interleaved rounds after "
        f"{st.get('warmup')} warm-up passes, at most {st.get('seconds', SECONDS)} s per row, intra-op threads: "
        f"{st.get('threads')}"
    ))
    table.add_column("", no_wrap=True)
    for x in cols:
        table.add_column(x["name"], justify="right")
    if c:
        table.add_column("teacher / student", justify="right")
    rows = [
        ("params", "params", "", c and c["params_ratio"]),
        ("bytes on disk", "file_bytes", "B", c and c["bytes_ratio"]),
        ("FLOPs / sample", "flops_per_sample", "", c and c["flops_ratio"]),
    ]
    for label, key, unit, ratio in rows:
        table.add_row(label, *[_human(x[key], unit) for x in cols], *([f"{ratio:.2f}x"] if c else []))
    reasons = []
    for key in s["latency_ms"]:
        cells = [_cell(x["latency_ms"].get(key)) for x in cols]
        speed = c["speedup_p50"].get(key) if c else None
        flagged = [x["latency_ms"][key] for x in cols if key in x["latency_ms"]
                   and not x["latency_ms"][key].get("reliable", True)]
        reasons += [f"{key}: {unreliable_reason(f)}" for f in flagged[:1]]
        ratio_cell = f"{speed:.2f}x" if speed else ("no ratio" if flagged else "-")
        table.add_row(f"{key} ms", *cells, *([ratio_cell] if c else []))
    if reasons:
        table.caption = ("! unreliable (no ratio shown): " + "; ".join(reasons)
                         + ". Time on an idle machine to compare.")
    return table
