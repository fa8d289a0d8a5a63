"""`kdistill list schemes` and `kdistill takd-study`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .app import app, list_app


@list_app.command("schemes")
def list_schemes(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Distillation schemes (multi-stage or multi-network training)."""
    from ..schemes import SCHEMES
    from .app import print_names

    print_names("schemes", SCHEMES.names(), as_json)

@app.command("takd-study")
def takd_study(
    config: Annotated[Path, typer.Argument(help="A takd config, e.g. examples/takd_study.yaml.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key (repeatable).")
    ] = None,
    teachers: Annotated[
        str | None,
        typer.Option(help="Comma-separated teacher models (default: scheme.study_teachers)."),
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="Study folder (default: output.dir/<output.name>-study).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Reuse finished stages.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the study as JSON.")] = False,
) -> None:
    """Student accuracy per teacher size, directly and through the assistant (Mirzadeh et al. 2019)."""
    from rich.table import Table

    from ..config import load_config
    from ..schemes.takd import run_study, study_settings
    from .app import console, log

    cfg = load_config(config, set_ or [])
    st = study_settings(cfg)
    if teachers:
        st["teachers"] = [t.strip() for t in teachers.split(",") if t.strip()]
    out_dir = run_dir or Path(cfg.output.dir) / f"{cfg.output.name or 'takd'}-study"
    out = run_study(cfg, out_dir, st["teachers"], st["student"], st["assistant"], resume=resume, log=log)
    if as_json:
        print(json.dumps(out))
        return
    table = Table(title=f"TAKD study: student {out['student']}, assistant {out['assistant']}")
    for col in ("teacher", "params", "teacher acc", "student (KD)", "student (via TA)"):
        table.add_column(col)
    fmt = lambda v: "-" if v is None else f"{v:.4f}"
    for r in out["rows"]:
        table.add_row(
            r["teacher"],
            str(r["teacher_params"]),
            fmt(r["teacher_acc"]),
            fmt(r["student_direct_acc"]),
            fmt(r["student_via_assistant_acc"]),
        )
    console.print(table)
    console.print(f"Study folder: {out_dir}")
