"""The ``kdistill`` command (Typer + Rich). It wires library calls; it holds no logic.

One module per area adds its commands to :data:`app` when imported (below, explicitly).
Every user mistake surfaces as a :class:`~kdistill.errors.KdistillError`: printed as one
paragraph, exit code non-zero, no traceback.
"""

from __future__ import annotations

import warnings

import typer

from ..errors import KdistillError

# each area module adds its commands when imported; this order is the order of `kdistill --help`
# isort: off
from . import run  # noqa: F401
from . import methods  # noqa: F401
from . import schemes  # noqa: F401
from . import export  # noqa: F401
from . import report  # noqa: F401
from . import perf  # noqa: F401
from . import quantize  # noqa: F401
from . import serve  # noqa: F401
# isort: on
from .app import app, err_console

__all__ = ["app", "main"]


def _format_warning(message, category, filename, lineno, line=None, _default=warnings.formatwarning):
    """kdistill's own warnings (a skipped damaged checkpoint, ...) as one line saying what
    happened; other libraries' keep their usual form, with where they come from."""
    if "kdistill" in str(filename):
        return f"warning: {message}\n"
    return _default(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning user errors into one message and an exit code.

    The current folder is importable, as in other Python CLIs (``python -m``, uvicorn,
    pytest's rootdir): a config may name ``mypkg.nets:big`` for ``./mypkg/nets.py``."""
    import os
    import sys

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    warnings.formatwarning = _format_warning
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

