"""The Typer app every area module adds its commands to, and what they share: the
console, one-line logging, the ``--set`` option and name lists."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Knowledge distillation: teacher to small, fast, verified student.")
list_app = typer.Typer(help="List registered names.", no_args_is_help=True)
app.add_typer(list_app, name="list")
console = Console()
err_console = Console(stderr=True)

SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: section.key=value (repeatable).")]
TrustOpt = Annotated[bool, typer.Option("--trust-checkpoint", help="Allow checkpoints that need pickle.")]
TrustCodeOpt = Annotated[bool, typer.Option(
    "--trust-code", help="Allow the folder's model.json / config.yaml to name an importable model factory "
    "(package.module:factory), which is imported and called: only for folders you trust.")]


def log(line: str) -> None:
    console.print(line, highlight=False)


def print_names(kind: str, names: list[str], as_json: bool) -> None:
    """A registry's names: a table, or a JSON list."""
    if as_json:
        print(json.dumps(names))
    else:
        table = Table(title=kind)
        table.add_column("name")
        for n in names:
            table.add_row(n)
        console.print(table)
