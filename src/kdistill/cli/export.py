"""`kdistill export`, `kdistill profile` and `kdistill predict`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..config import parse_ints
from ..errors import ConfigError
from .app import TrustCodeOpt, app, console


@app.command("export")
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder.")],
    format: Annotated[Optional[str], typer.Option("--format", "-f", help="onnx, torchscript or safetensors (image runs; default onnx); hf (causal-LM runs, the default there).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output file (folder for safetensors); default RUN_DIR/export/.")] = None,
    exporter: Annotated[str, typer.Option(help="ONNX exporter: auto (torch.export, then legacy), dynamo or legacy.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the export.json entry.")] = False,
    trust_code: TrustCodeOpt = False,
    int8: Annotated[bool, typer.Option("--int8", help="Export the run's int8 student (from `kdistill quantize`) as ONNX instead.")] = False,
    int8_method: Annotated[Optional[str], typer.Option(help="With --int8: which one, ptq, qat or qad (default: qad, else qat, else ptq, whichever exists).")] = None,
    bake_preprocess: Annotated[bool, typer.Option("--bake-preprocess", help="ONNX with the image crop and normalisation inside: uint8 (N, resize, resize, C) pixels in, probabilities out (export.json key onnx-baked).")] = False,
) -> None:
    """Export the run's student and check it against PyTorch on the test set (writes export.json)."""
    if int8 or int8_method is not None:
        from ..config import run_task
        from ..quantize import export_int8

        run_task(run_dir).require("quantize")

        entry = export_int8(run_dir, int8_method, format=format or "onnx", out=out, trust_code=trust_code)
        if as_json:
            print(json.dumps(entry, indent=2))
            return
        console.print(f"int8 {entry['int8']} ONNX: {entry['path']} ({entry['file_bytes']:,} bytes); agreement with int8 "
                      f"PyTorch {entry['parity']['top1_agreement']:.2%}, with the float student "
                      f"{entry['parity_float']['top1_agreement']:.2%}", highlight=False)
        return
    from ..config import run_task

    options = {"format": format} if format is not None else {}
    if bake_preprocess:
        if format not in (None, "onnx"):
            raise ConfigError("--bake-preprocess builds an ONNX graph; use it with --format onnx (the default).")
        options["format"] = "onnx-baked"
    entry = run_task(run_dir).export(run_dir, out=out, exporter=exporter, trust_code=trust_code, **options)
    if as_json:
        print(json.dumps(entry, indent=2))
        return
    p = entry["parity"]
    table = Table(title=f"export {entry['format']} of {run_dir}")
    table.add_column("")
    table.add_column("value", justify="right")
    rows = [
        ("file", entry["path"]),
        ("bytes", f"{entry['file_bytes']:,}"),
        ("runtime", entry["runtime"]),
        *([("exporter", f"{entry['exporter']} (opset {entry.get('opset')})")] if "exporter" in entry else []),
        (f"max |logit diff| ({p['samples']} {'validation rows' if entry['format'] == 'hf' else 'test samples'})",
         f"{p['max_abs_diff']:.3g}"),
        ("top-1 agreement", f"{p['top1_agreement']:.4%}"),
        ("classes", ", ".join(entry.get("class_names") or []) or "not recorded (labels are numbers)"),
        ("input", entry.get("input") or _contract_words(entry.get("preprocess"))),
    ]
    for k, v in rows:
        table.add_row(k, str(v))
    console.print(table)

def _contract_words(c: dict | None) -> str:
    if not c:
        return "not recorded"
    if c.get("kind") != "image":
        return f"arrays, normalised with mean {c.get('mean')} std {c.get('std')}"
    return (f"{c['channel_order']} image, fit to {c['resize']}x{c['resize']} ({c['interpolation']}), center "
            f"{c['size']}x{c['size']}, /255, mean {c['mean']} std {c['std']}")


@app.command("profile")
def profile_cmd(
    run_dir: Annotated[Optional[Path], typer.Argument(help="A finished run folder (or use --model).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Profile a zoo model alone, freshly initialised.")] = None,
    input_shape: Annotated[Optional[str], typer.Option(help="With --model: one sample's shape, e.g. 1,28,28.")] = None,
    num_classes: Annotated[int, typer.Option(help="With --model: number of classes.")] = 10,
    kwargs: Annotated[Optional[str], typer.Option(help='With --model: factory arguments as JSON, e.g. \'{"hidden": [64]}\'.')] = None,
    batch_sizes: Annotated[str, typer.Option(help="Batch sizes to time.")] = "1,64",
    repeats: Annotated[int, typer.Option(min=1, help="At most this many interleaved timing rounds (3 to 15).")] = 50,
    seconds: Annotated[float, typer.Option(min=0.01, help="Time bound per backend and batch size (all models together).")] = 1.0,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed passes first.")] = 10,
    onnx: Annotated[bool, typer.Option("--onnx/--no-onnx", help="Also time ONNX Runtime (needs the export extra).")] = True,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Intra-op threads for PyTorch and ONNX Runtime (default: PyTorch's).")] = None,
    teacher: Annotated[bool, typer.Option("--teacher/--no-teacher", help="Profile the run's teacher beside the student.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    trust_code: TrustCodeOpt = False,
    int8: Annotated[bool, typer.Option("--int8", help="Teacher, float student and the run's int8 students side by side in ONNX Runtime (writes int8/profile.json).")] = False,
) -> None:
    """Params, bytes, FLOPs and latency of a run's student and teacher (writes profile.json), or of one model."""
    if int8:
        from ..quantize import int8_table, profile_int8

        if run_dir is None:
            raise ConfigError("--int8 profiles a run folder's int8 students; give the run folder.")
        from ..config import run_task

        run_task(run_dir).require("quantize")
        res = profile_int8(run_dir, parse_ints(batch_sizes, "--batch-sizes"), repeats, warmup, trust_code=trust_code)
        if as_json:
            print(json.dumps(res, indent=2))
        else:
            console.print(int8_table(res))
        return
    from ..profile import profile_table, profile_zoo_model

    sizes = parse_ints(batch_sizes, "--batch-sizes")
    if (run_dir is None) == (model is None):
        raise ConfigError("Give either a run folder or --model NAME (with --input-shape), not both or neither.")
    if model is not None:
        if input_shape is None:
            raise ConfigError("--model needs --input-shape, e.g. --input-shape 1,28,28 (channels first).")
        try:
            kw = json.loads(kwargs) if kwargs else {}
        except ValueError:
            raise ConfigError(f"--kwargs must be a JSON object, got {kwargs!r}.") from None
        if not isinstance(kw, dict):
            raise ConfigError(f"--kwargs must be a JSON object, got {kwargs!r}.")
        result = profile_zoo_model(model, parse_ints(input_shape, "--input-shape"), num_classes, kw,
                                   sizes, repeats, warmup, onnx, threads, seconds)
    else:
        from ..config import run_task

        result = run_task(run_dir).profile(run_dir, batch_sizes=sizes, repeats=repeats, warmup=warmup, onnx=onnx,
                                           teacher=teacher, threads=threads, trust_code=trust_code, seconds=seconds)
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    if "rows" in result:  # a task's own table (causal-LM: prefill and per-token latency)
        table = Table(title=f"profile of {run_dir}")
        for c in result["columns"]:
            table.add_column(c, justify="left" if c == "model" else "right")
        for r in result["rows"]:
            table.add_row(*r)
        console.print(table)
        console.print(f"Wrote {Path(run_dir) / 'profile.json'}", highlight=False)
        return
    console.print(profile_table(result))
    console.print(f"ONNX Runtime: {result['student']['onnx']}", highlight=False)
    if run_dir is not None:
        console.print(f"Wrote {Path(run_dir) / 'profile.json'}", highlight=False)

@app.command("predict")
def predict_cmd(
    source: Annotated[Path, typer.Argument(help="A run folder or an exported .onnx file (float, baked or int8).")],
    inputs: Annotated[list[Path], typer.Argument(help="Image files and folders of images, or one .npz with array "
                                                      "'x' of shape (N, *input_shape) (preprocessed arrays).")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Images: a .csv of file, rank, label, class, "
                                                "probability. .npz input: the output .npz (default predictions.npz).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Images: classes listed per file.")] = 1,
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per forward pass.")] = 256,
    trust_code: TrustCodeOpt = False,
) -> None:
    """Run the saved student on image files (decoded as the test split is) or on an .npz of arrays."""
    from ..config import run_task

    if source.is_dir() and (source / "config.yaml").is_file():
        run_task(source).require("predict")
    if len(inputs) == 1 and inputs[0].suffix == ".npz":
        from ..predict import predict

        res = predict(source, inputs[0], out or Path("predictions.npz"), batch_size=batch_size, trust_code=trust_code)
        console.print(f"Predicted {res['samples']} samples ({res['num_classes']} classes, {res['backend']}) "
                      f"-> {res['out']}", highlight=False)
        return
    from ..predict import predict_files

    res = predict_files(source, inputs, top_k=top_k, out=out, batch_size=batch_size, trust_code=trust_code)
    table = Table("file", "rank", "class", "probability")
    for r in res["rows"]:
        table.add_row(r["file"], str(r["rank"]), r["class"], f"{r['probability']:.3f}")
    console.print(table)
    console.print(f"{res['files']} image(s), {res['backend']}" + (f" -> {res['out']}" if res["out"] else "")
                  + ("" if res["class_names"] else " (no class names recorded: labels are numbers)"), highlight=False)


@app.command("generate")
def generate_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder of a task that generates (causal-lm).")],
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="A prompt (repeatable).")],
    max_new_tokens: Annotated[int, typer.Option(min=1, max=4096, help="Tokens to generate per prompt.")] = 48,
    temperature: Annotated[float, typer.Option(min=0.0, max=100.0, help="0: greedy; else sampled.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the sampling.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the completions as JSON.")] = False,
) -> None:
    """The run's student completing prompts."""
    from rich.markup import escape

    from ..config import run_task

    out = run_task(run_dir).generate(run_dir, list(prompt), max_new_tokens=max_new_tokens, temperature=temperature,
                                     seed=seed)
    if as_json:
        print(json.dumps(out, indent=2))
        return
    for o in out:
        console.print(f"[bold]{escape(o['prompt'])}[/]{escape(o['completion'])}", highlight=False)
