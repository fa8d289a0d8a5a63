"""`kdistill compare`, `kdistill sweep` and `kdistill report`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import SetOpt, TrustCodeOpt, app, console

SeedsOpt = Annotated[str, typer.Option("--seeds", help="Comma-separated seeds, e.g. 0,1,2.")]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", help="Folder of the grid (default: output.dir/compare-<config> or sweep-<config>)."),
]
TeacherOpt = Annotated[
    str, typer.Option("--teacher", help="per-seed: one teacher per seed (default); shared: one for all.")
]
ReportOpt = Annotated[bool, typer.Option("--report/--no-report", help="Also write report.md/report.html with plots.")]


COMPARE_HELP = (
    "Methods (or configs) x seeds, with a scratch student and one teacher per seed.\n\n"
    "Prints mean, std and 95% intervals over seeds and the paired gain over the scratch student; "
    "writes compare.json, compare.md and (by default) the report. Re-running the same command skips "
    "finished cells. Examples: `kdistill compare cfg.yaml --methods kd,at,rkd --seeds 0,1,2`, "
    "`kdistill compare --configs a.yaml b.yaml --seeds 0,1`."
)
SWEEP_HELP = (
    "Grid over config keys (e.g. method.temperature x method.alpha), each point over seeds.\n\n"
    "A scratch student per seed is the baseline; the report draws a heatmap when two keys are swept "
    "(temperature x alpha preferred). Re-running the same command skips finished cells. Example: "
    "`kdistill sweep cfg.yaml --grid method.temperature=1,2,4,8,20 --grid method.alpha=0.5,0.9`."
)


def _log(line: str) -> None:

    console.print(line, highlight=False)


def _finish(agg: dict, out: Path, title: str, report: bool) -> None:
    from ..report.tables import rich_table, table_legend

    console.print(rich_table(agg, title))
    console.print(table_legend(agg).replace("**", ""), highlight=False)
    if report:
        from ..report.html import build_report

        # the grid's records name the models of the configs given on this command line only
        res = build_report(out, log=_log, trust_code=frozenset(agg.get("own_models", ())))
        console.print(f"Report: {res['html']}")
    console.print(f"Compare folder: {out} (compare.json, compare.md)")
    if agg.get("failed"):
        for f in agg["failed"]:
            console.print(f"[bold red]failed:[/] {f['run']}: {f['reason'].removeprefix('failed: ')}", highlight=False)
        raise typer.Exit(1)



@app.command("compare", help=COMPARE_HELP)
def compare_cmd(
    config: Annotated[
        list[Path] | None,
        typer.Argument(help="A YAML config (with --methods), or several configs to compare."),
    ] = None,
    methods: Annotated[
        str | None,
        typer.Option(
            "--methods",
            help="Comma-separated method names (`kdistill list methods`); kd+at combines terms.",
        ),
    ] = None,
    configs: Annotated[
        list[Path] | None,
        typer.Option("--configs", help="Configs to compare with each other (each one a row)."),
    ] = None,
    seeds: SeedsOpt = "0",
    out: OutOpt = None,
    teacher: TeacherOpt = "per-seed",
    set_: SetOpt = None,
    report: ReportOpt = True,
    trust_checkpoint: Annotated[
        bool, typer.Option("--trust-checkpoint", help="Allow checkpoints that need pickle.")
    ] = False,
) -> None:
    """Methods (or configs) x seeds, with a scratch student and one teacher per seed."""
    from ..errors import ConfigError
    from ..report.compare import compare, parse_seeds

    paths = list(configs or []) + list(config or [])
    if methods is not None:
        if len(paths) != 1:
            raise ConfigError("--methods compares methods on exactly one config file.")
        result = compare(
            paths[0],
            methods=methods.split(","),
            seeds=parse_seeds(seeds),
            overrides=set_ or [],
            out=out,
            teacher=teacher,
            log=_log,
            trust=trust_checkpoint,
        )
    else:
        if len(paths) < 2:
            raise ConfigError("Give --methods m1,m2 with one config, or two or more configs to compare.")
        result = compare(
            None,
            configs=paths,
            seeds=parse_seeds(seeds),
            overrides=set_ or [],
            out=out,
            teacher=teacher,
            log=_log,
            trust=trust_checkpoint,
        )
    _finish(result, Path(result["out"]), "compare", report)

@app.command("sweep", help=SWEEP_HELP)
def sweep_cmd(
    config: Annotated[Path, typer.Argument(help="The base YAML config.")],
    grid: Annotated[
        list[str],
        typer.Option("--grid", help="section.key=v1,v2,... (repeatable; the grid is the product)."),
    ],
    seeds: SeedsOpt = "0",
    out: OutOpt = None,
    teacher: TeacherOpt = "per-seed",
    set_: SetOpt = None,
    report: ReportOpt = True,
    trust_checkpoint: Annotated[
        bool, typer.Option("--trust-checkpoint", help="Allow checkpoints that need pickle.")
    ] = False,
) -> None:
    """Grid over config keys (e.g. method.temperature x method.alpha), each point over seeds."""
    from ..report.compare import parse_seeds, sweep

    result = sweep(
        config,
        grid,
        seeds=parse_seeds(seeds),
        overrides=set_ or [],
        out=out,
        teacher=teacher,
        log=_log,
        trust=trust_checkpoint,
    )
    _finish(result, Path(result["out"]), "sweep", report)

@app.command("report")
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run folder or a compare/sweep folder.")],
    calibration: Annotated[
        bool,
        typer.Option(
            "--calibration/--no-calibration",
            help="Rebuild networks and data for the reliability and per-class plots.",
        ),
    ] = True,
    trust_code: TrustCodeOpt = False,
) -> None:
    """Write report.md and a self-contained report.html (plots embedded) from run folders alone."""
    from ..report.html import build_report
    from ..report.tables import rich_table

    res = build_report(run_dir, log=_log, calibration=calibration, trust_code=trust_code)
    console.print(rich_table(res["aggregate"], str(run_dir)))
    console.print(f"Wrote {res['markdown']} and {res['html']} ({len(res['plots'])} plots).")
