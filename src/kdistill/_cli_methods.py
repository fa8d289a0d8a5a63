"""`kdistill` commands of the methods area, wired into the app by cli.py."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from .errors import ConfigError, ShapeError


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,28,28"`` -> ``(1, 28, 28)``, or a ConfigError saying what a shape looks like."""
    try:
        shape = tuple(int(p) for p in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise ConfigError(
            f"--input-shape {text!r} is not a shape; give positive sizes without the batch "
            f"dimension, channels first, e.g. 1,28,28 (image) or 1,40 (sequence)."
        )
    return shape


def layer_table(model_name: str, input_shape: tuple[int, ...], num_classes: int) -> dict:
    """Every module path of ``model_name`` with its type and output shape (batch dim dropped),
    plus the model's declared default taps."""
    import torch

    from .models import create_model, default_taps
    from .taps import layer_shapes

    model = create_model(model_name, num_classes, input_shape)
    # two samples, so BatchNorm in any mode accepts the probe
    example = torch.zeros(2, *input_shape)
    try:
        rows = layer_shapes(model, example)
    except RuntimeError as e:
        raise ShapeError(
            f"Model {model_name!r} does not accept inputs of shape {input_shape}: {e}. "
            f"Pass the right --input-shape."
        ) from None
    layers = [{"path": p, "type": t, "shape": list(s[1:]) if s is not None else None} for p, t, s in rows]
    return {"model": model_name, "input_shape": list(input_shape), "layers": layers,
            "default_taps": default_taps(model)}


def register(app: typer.Typer, list_app: typer.Typer) -> None:
    """Add this area's commands to the app: ``kdistill list layers``."""

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
        info = layer_table(model, parse_shape(input_shape), num_classes)
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
