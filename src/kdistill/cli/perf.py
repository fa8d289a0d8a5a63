"""`kdistill cache-teacher` and `kdistill bench`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .app import SetOpt, app, console, err_console, log


@app.command("cache-teacher")
def cache_teacher_cmd(
    config: Annotated[Path, typer.Argument(help="Run config whose teacher (with checkpoint) is cached.")],
    out: Annotated[Path, typer.Option("--out", help="Cache folder to create.")],
    set_: SetOpt = None,
    topk: Annotated[int | None, typer.Option(help="Keep only the k largest logits per sample.")] = None,
    dtype: Annotated[str, typer.Option(help="Storage precision: fp32 or fp16.")] = "fp32",
    views: Annotated[int, typer.Option(help="Augmented views per sample (uses data.augment).")] = 1,
    feature: Annotated[
        list[str] | None, typer.Option(help="Teacher tap spec to store too (repeatable).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Teacher batch size (default data.eval_batch_size).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing cache.")] = False,
    trust_checkpoint: Annotated[
        bool, typer.Option("--trust-checkpoint", help="Allow checkpoints that need pickle.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the cache's meta.json.")] = False,
) -> None:
    """Run the teacher once over the training data and store its outputs (use with teacher.cache)."""
    from ..cache import describe
    from ..config import load_config
    from ..runs import cache_from_config

    cfg = load_config(config, set_ or [])
    meta = cache_from_config(
        cfg,
        out,
        features=feature or (),
        topk=topk,
        dtype=dtype,
        views=views,
        batch_size=batch_size,
        overwrite=overwrite,
        trust=trust_checkpoint,
        log=None if as_json else log,
    )
    if as_json:
        print(json.dumps(meta))
    else:
        log(f"Cached {describe(meta)}")
        log(f"Use it with: --set teacher.cache={out}")

@app.command("bench")
def bench_cmd(
    teacher: Annotated[str, typer.Option(help="Teacher model.")] = "resnet32x4",
    student: Annotated[str, typer.Option(help="Student model.")] = "resnet8x4",
    dataset: Annotated[str, typer.Option(help="Dataset.")] = "fashion-mnist",
    option: Annotated[
        list[str] | None,
        typer.Option(help="Dataset option key=value (repeatable; fashion-mnist defaults to pad_to=32)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Samples per step.")] = 128,
    steps: Annotated[int | None, typer.Option(help="Timed steps per path (default 50 on CUDA, 10 on a CPU).")] = None,
    warmup: Annotated[int | None, typer.Option(help="Untimed warm-up steps per path (default 10 on CUDA, 2 on a CPU).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N].")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 on CUDA), bf16 or fp32.")] = "auto",
    compile: Annotated[
        bool, typer.Option("--compile", help="torch.compile the networks (fast paths).")
    ] = False,
    compile_mode: Annotated[
        str, typer.Option("--compile-mode", help="torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune.")
    ] = "default",
    compile_scope: Annotated[
        str, typer.Option("--compile-scope", help="networks (each network) or step (teacher + student + loss in one graph).")
    ] = "networks",
    channels_last: Annotated[
        bool | None,
        typer.Option("--channels-last/--no-channels-last", help="NHWC layout on the fast paths (default: on for image data)."),
    ] = None,
    n_train: Annotated[
        int | None, typer.Option(help="Use this many training samples (default: all on CUDA, 2048 on a CPU; 0: all).")
    ] = None,
    cache_views: Annotated[int, typer.Option(help="Augmented views in the cached path's cache.")] = 4,
    paths: Annotated[
        str, typer.Option(help="Comma-separated: student,kd_live,kd_cached,naive,teacher (forward only).")
    ] = "student,kd_live,kd_cached,naive,teacher",
    repeat: Annotated[
        int, typer.Option(help="Measure every path this many times, round-robin; report the median.")
    ] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Training throughput (images/s, step time, peak memory): fast paths vs a naive DataLoader loop."""
    from rich.table import Table

    from ..bench import format_table, format_targets, run_bench
    from ..config import parse_override

    opts = dict(parse_override(o) for o in option or []) if option else None
    result = run_bench(
        teacher,
        student,
        dataset,
        opts,
        batch_size=batch_size,
        steps=steps,
        warmup=warmup,
        device=device,
        precision=precision,
        compile=compile,
        compile_mode=compile_mode,
        compile_scope=compile_scope,
        channels_last=channels_last,
        n_train="auto" if n_train is None else (n_train or None),
        cache_views=cache_views,
        paths=tuple(p.strip() for p in paths.split(",") if p.strip()),
        repeat=repeat,
        log=lambda line: err_console.print(line, highlight=False, markup=False),
    )
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"{student} <- {teacher} on {dataset}, batch {batch_size}, {result['device']}")
    for col in ("path", "images/s", "ms/step", "peak MiB", "x naive"):
        table.add_column(col)
    for row in format_table(result):
        table.add_row(*row)
    console.print(table)
    for line in format_targets(result):
        console.print(line, markup=False, highlight=False)
    if result["cache"]:
        console.print(f"cache: {result['cache']['summary']} built in {result['cache']['build_s']} s")
