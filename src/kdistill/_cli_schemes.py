"""`kdistill` commands of the schemes area, wired into the app by cli.py."""

from __future__ import annotations

import typer


def register(app: typer.Typer, list_app: typer.Typer) -> None:
    """Add this area's commands to the app (none yet)."""
