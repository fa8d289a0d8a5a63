"""The ``kdistill`` command (Typer + Rich). It wires library calls; it holds no logic.

Every user mistake surfaces as a :class:`~kdistill.errors.KdistillError`: printed as one
paragraph, exit code non-zero, no traceback.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import KdistillError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Knowledge distillation: teacher to small, fast, verified student.")
console = Console()
err_console = Console(stderr=True)

SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: section.key=value (repeatable).")]


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def log(line: str) -> None:
    console.print(line, highlight=False)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's run folder.")] = Path("runs"),
    epochs: Annotated[Optional[int], typer.Option(help="Override the student epochs (quick look).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of every model's initialisation and data order.")] = 0,
) -> None:
    """Distil a CNN into an MLP on MNIST-1D (generated locally): scratch vs KD vs KD + transfer set."""
    from .demo import print_demo_table, run_demo

    result = run_demo(out, epochs=epochs, seed=seed, log=log)
    print_demo_table(result, console)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML config (sections data, teacher, student, method, train, output).")],
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in the output folder from its last checkpoint.")] = False,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="Exact run folder (default: output.dir/output.name).")] = None,
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help="Allow loading checkpoints that need pickle (runs code from the file).")] = False,
) -> None:
    """Train one run (the teacher first, if it has no checkpoint)."""
    from .config import load_config
    from .engine.run import run_experiment

    cfg = load_config(config, set_ or [])
    if cfg.scheme:
        from .schemes import run_scheme

        result = run_scheme(cfg, run_dir=run_dir, resume=resume, log=log, trust=trust_checkpoint)
    else:
        result = run_experiment(cfg, run_dir=run_dir, resume=resume, log=log, trust=trust_checkpoint)
    print_run_summary(result)


def print_run_summary(result: dict) -> None:
    table = Table(title=f"run {result.get('name', '')}")
    for col in ("model", "params", "test acc (last)", "test acc (best)", "agreement", "ECE"):
        table.add_column(col)
    t = result.get("teacher") or {}
    if t.get("metrics"):
        m = t["metrics"]["test"]
        table.add_row(f"teacher {t.get('model', '')}", f"{t.get('params', '')}", f"{m['acc']:.4f}", "", "", f"{m['ece']:.4f}")
    s = result.get("student", {})
    fin = result.get("final", {}).get("test", {})
    best = result.get("best", {}).get("test", {})
    if fin:
        table.add_row(f"student {s.get('model', '')}", f"{s.get('params', '')}", f"{fin['acc']:.4f}",
                      f"{best.get('acc', float('nan')):.4f}", f"{fin.get('agreement', float('nan')):.4f}", f"{fin['ece']:.4f}")
    console.print(table)
    if "run_dir" in result:
        console.print(f"Run folder: {result['run_dir']}")


@app.command("eval")
def eval_(run_dir: Annotated[Path, typer.Argument(help="A finished run folder.")]) -> None:
    """Re-evaluate a saved run's student (and teacher) on its test set."""
    from .evaluate import evaluate_run

    out = evaluate_run(run_dir)
    console.print_json(json.dumps(out))


list_app = typer.Typer(help="List registered names.", no_args_is_help=True)
app.add_typer(list_app, name="list")


def _print_names(kind: str, names: list[str], as_json: bool) -> None:
    if as_json:
        print(json.dumps(names))
    else:
        table = Table(title=kind)
        table.add_column("name")
        for n in names:
            table.add_row(n)
        console.print(table)


@list_app.command("methods")
def list_methods(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Distillation methods (loss terms)."""
    from .methods import METHODS

    _print_names("methods", METHODS.names(), as_json)


@list_app.command("models")
def list_models(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Models of the zoo."""
    from .models import MODELS

    _print_names("models", MODELS.names(), as_json)


@list_app.command("datasets")
def list_datasets(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Datasets."""
    from .data import DATASETS

    _print_names("datasets", DATASETS.names(), as_json)


# Commands of each area live beside their code and are wired here.
for _area in ("methods", "schemes", "export", "report", "perf"):
    importlib.import_module(f"kdistill._cli_{_area}").register(app, list_app)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning user errors into one message and an exit code."""
    try:
        app(args=argv, standalone_mode=False)
    except KdistillError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except OSError as e:
        # disk full, unwritable folder, vanished file: say which and why; files are written
        # atomically, so nothing finished was replaced by a half-written one
        where = f" ({e.filename})" if e.filename else ""
        err_console.print(f"[bold red]error:[/] cannot read or write a file{where}: {e.strerror or e}. "
                          "Finished results were not touched; free space or fix permissions, then re-run "
                          "(add --resume to continue a run).", highlight=False, soft_wrap=True)
        return 1
    except Exception as e:  # click's usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return e.exit_code
        if isinstance(e, click.exceptions.Abort):
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
