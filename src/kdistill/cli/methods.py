"""`kdistill list layers`: the layers of a model, to pick taps."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ..config import parse_ints
from ..models import layer_table
from .app import list_app


@list_app.command("layers")
def list_layers(
    model: Annotated[
        str, typer.Argument(help="Zoo name, timm:NAME, torchvision:NAME or pkg.mod:factory.")
    ],
    input_shape: Annotated[
        str, typer.Option("--input-shape", help="Input shape without batch, e.g. 1,28,28.")
    ] = "1,28,28",
    num_classes: Annotated[int, typer.Option("--num-classes", help="Logit width.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Every module path with its type and output shape, to pick tap layers for feature methods."""
    info = layer_table(model, parse_ints(input_shape, "--input-shape"), num_classes)
    if as_json:
        print(json.dumps(info))
        return
    from rich.console import Console
    from rich.table import Table

    taps = info["default_taps"] or {}
    marks = {spec: f"stage {i + 1}" for i, spec in enumerate(taps.get("stages") or [])}
    if taps.get("embedding"):
        marks.setdefault(taps["embedding"], "embedding")
    table = Table(title=f"{model} on input {tuple(info['input_shape'])}")
    for col in ("path", "type", "output shape", "default tap"):
        table.add_column(col)
    for row in info["layers"]:
        shape = "-" if row["shape"] is None else "x".join(str(d) for d in row["shape"]) or "scalar"
        mark = marks.get(row["path"]) or marks.get(row["path"] + ":input", "")
        if row["path"] + ":input" in marks:
            mark = f"{marks[row['path'] + ':input']} (its input)"
        table.add_row(row["path"], row["type"], shape, mark)
    console = Console()
    console.print(table)
    console.print("Tap a module's output by its path, its input with 'path:input' "
                  "(method.student_layers / method.teacher_layers).", highlight=False)
