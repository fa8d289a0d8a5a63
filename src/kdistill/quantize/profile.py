"""Teacher, float student and int8 students side by side, all run by ONNX Runtime on CPU:
parameters, bytes on disk (the ONNX file each ships as), batch-1 and batch-64 latency
(median, 5th-95th percentile), test accuracy and agreement with the teacher."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json
from ..metrics import accuracy, agreement
from ..runs import load_saved, prepare_data
from .backend import QuantizeError
from .core import METHODS
from .run import _config, _float_onnx, _logits, export_onnx, int8_dir, load_int8, ort_latency, ort_runner, ort_session


def profile_int8(run_dir: str | Path, batch_sizes=(1, 64), repeats: int = 30, warmup: int = 5,
                 trust_code: bool = False) -> dict[str, Any]:
    """Profile every model of a quantized run; writes ``RUN/int8/profile.json``."""
    run_dir = Path(run_dir)
    methods = [m for m in METHODS if (int8_dir(run_dir, m) / "quantize.json").is_file()]
    if not methods:
        raise QuantizeError(f"{run_dir} has no int8 student yet; run `kdistill quantize {run_dir} --method ptq` first.")
    cfg = _config(run_dir)
    data = prepare_data(cfg)
    test, ebs = data.test, int(cfg.data.eval_batch_size)
    labels = test.labels()
    student, record = load_saved(run_dir, "student", trust_code)
    shape = tuple(record["input_shape"])
    rows: list[tuple[str, Path, int]] = []
    if (run_dir / "teacher" / "model.safetensors").is_file():
        teacher, _ = load_saved(run_dir / "teacher", "teacher", trust_code)
        tpath = run_dir / "int8" / "teacher.float.onnx"
        if not tpath.is_file():
            export_onnx(teacher, shape, tpath)
        rows.append(("teacher (float)", tpath, sum(p.numel() for p in teacher.parameters())))
    params = sum(p.numel() for p in student.parameters())
    rows.append(("student (float)", _float_onnx(run_dir, student, shape), params))
    for m in methods:
        path = int8_dir(run_dir, m) / "model.int8.onnx"
        if not path.is_file():
            q, _ = load_int8(run_dir, m, trust_code)
            export_onnx(q.int8, shape, path)
        rows.append((f"student int8 {m}", path, params))
    out: dict[str, Any] = {"run": run_dir.name, "runtime": "onnxruntime CPUExecutionProvider, 1 thread",
                           "repeats": repeats, "warmup": warmup, "models": []}
    t_logits = None
    for name, path, n_params in rows:
        sess = ort_session(path)
        logits = _logits(ort_runner(sess), test, ebs)
        if name.startswith("teacher"):
            t_logits = logits
        row = {"name": name, "params": n_params, "file_bytes": path.stat().st_size, "acc": accuracy(logits, labels),
               "latency_ms": {f"b{b}": ort_latency(sess, shape, b, repeats, warmup) for b in batch_sizes}}
        if t_logits is not None:
            row["agreement_teacher"] = agreement(logits, t_logits)
        out["models"].append(row)
    atomic_write_json(run_dir / "int8" / "profile.json", out)
    return out


def int8_table(result: dict[str, Any]):
    """A rich table of :func:`profile_int8`'s result."""
    from rich.table import Table

    table = Table(title=f"{result['run']}: float vs int8 ({result['runtime']})")
    for col in ("model", "params", "bytes", "acc", "agree w/ teacher"):
        table.add_column(col, justify="left" if col == "model" else "right")
    keys = list(result["models"][0]["latency_ms"])
    for k in keys:
        table.add_column(f"{k} ms p50 [p5-p95]", justify="right")
    for r in result["models"]:
        lat = [f"{r['latency_ms'][k]['p50']:.3f} [{r['latency_ms'][k]['p05']:.3f}-{r['latency_ms'][k]['p95']:.3f}]"
               for k in keys]
        agree = f"{r['agreement_teacher']:.2%}" if "agreement_teacher" in r else "-"
        table.add_row(r["name"], f"{r['params']:,}", f"{r['file_bytes']:,}", f"{r['acc']:.2%}", agree, *lat)
    return table


def read_profile(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "int8" / "profile.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
