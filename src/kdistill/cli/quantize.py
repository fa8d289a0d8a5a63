"""`kdistill quantize`: the run's student to int8 (PTQ, QAT or QAD)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .app import TrustCodeOpt, app, console, log


@app.command("quantize")
def quantize_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder.")],
    method: Annotated[str, typer.Option(help="ptq (calibrate only), qat (fake-quant training, CE) or qad (fake-quant distillation from the float teacher).")] = "ptq",
    calib: Annotated[Optional[int], typer.Option(help="Calibration samples drawn from the run's training data (default: all, up to 512; at least 32).")] = None,
    epochs: Annotated[int, typer.Option(help="qat/qad: epochs of fake-quantized training.")] = 2,
    lr: Annotated[float, typer.Option(help="qat/qad: SGD learning rate (cosine to 0).")] = 1e-3,
    batch_size: Annotated[Optional[int], typer.Option(help="qat/qad batch size (default: the run's).")] = None,
    teacher: Annotated[str, typer.Option(help="qad: distil from the run's 'teacher' or its float 'student'.")] = "teacher",
    alpha: Annotated[float, typer.Option(help="qad: weight of the KD term (1-alpha on cross-entropy).")] = 0.9,
    temperature: Annotated[Optional[float], typer.Option(help="qad: KD temperature (default: the run's, else 4).")] = None,
    keep_float: Annotated[Optional[list[str]], typer.Option("--keep-float", help="A layer (dotted name) to leave in float (repeatable).")] = None,
    allow_float: Annotated[bool, typer.Option("--allow-float", help="Run layers the quantizer cannot quantize in float instead of failing.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of calibration draw and training order.")] = 0,
    full_range: Annotated[Optional[bool], typer.Option("--full-range/--reduce-range", help="8-bit or 7-bit activations; default: 8-bit where this CPU has VNNI/AMX (exact there), else 7-bit.")] = None,
    onnx: Annotated[bool, typer.Option("--onnx/--no-onnx", help="Also write the int8 ONNX model, size and latency.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print quantize.json.")] = False,
    trust_code: TrustCodeOpt = False,
) -> None:
    """Quantize the run's student to int8 into RUN_DIR/int8/METHOD/ (accuracy, size, latency in quantize.json)."""
    from ..config import run_task
    from ..quantize import quantize_run

    run_task(run_dir).require("quantize")
    res = quantize_run(run_dir, method, teacher=teacher, calib=calib, epochs=epochs, lr=lr, batch_size=batch_size,
                       alpha=alpha, temperature=temperature, keep_float=keep_float or (), allow_float=allow_float,
                       seed=seed, reduce_range=None if full_range is None else not full_range, onnx=onnx, log=log if not as_json else (lambda s: None), trust_code=trust_code)
    if as_json:
        print(json.dumps(res, indent=2))
        return
    t = res["test"]
    table = Table(title=f"int8 {method} of {run_dir}")
    table.add_column("")
    table.add_column("value", justify="right")
    rows = [("test acc float student", f"{t['acc_float']:.2%}"), (f"test acc int8 {method}", f"{t['acc_int8']:.2%}"),
            ("int8 / float top-1 agreement", f"{t['agreement_int8_float']:.2%}")]
    if "acc_teacher" in t:
        rows += [("test acc teacher", f"{t['acc_teacher']:.2%}"), ("int8 / teacher agreement", f"{t['agreement_int8_teacher']:.2%}")]
    if "onnx" in res:
        o = res["onnx"]
        rows += [("int8 ONNX bytes", f"{o['bytes']:,}"), ("float ONNX bytes", f"{o['float_onnx_bytes']:,}"),
                 ("ONNX int8 / PyTorch int8 agreement", f"{o['parity_int8_pytorch']['top1_agreement']:.2%}")]
        for b, lat in o["latency_ms"].items():
            rows.append((f"ORT latency {b} ms, float -> int8", f"{lat['float']['p50']:.3f} -> {lat['int8']['p50']:.3f}"))
    if res.get("float_layers"):
        rows.append(("layers left in float", ", ".join(f"{op}:{name}" for op, name in res["float_layers"])))
    rows.append(("CPU int8 flags", ", ".join(res["cpu"]["flags"]) or "none read"))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)
    if "speed" in res:
        console.print(res["speed"]["remark"], highlight=False)
    console.print(f"Wrote {Path(run_dir) / 'int8' / method}", highlight=False)
