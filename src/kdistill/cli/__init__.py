"""The ``kdistill`` command (Typer + Rich). It wires library calls; it holds no logic.

One module per area adds its commands to :data:`app` when imported (below, explicitly).
Every user mistake surfaces as a :class:`~kdistill.errors.KdistillError`: printed as one
paragraph, exit code non-zero, no traceback.
"""

from __future__ import annotations

import warnings

import typer

from ..errors import KdistillError
from ..safe_read import allow_remote_code, safetensors_os_error

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


def _quiet_library_noise() -> None:
    """torchao's "Failed to load ... .so" lines (optional kernels for other GPUs) and torch's
    pytree deprecation notes are printed at import by every Hugging Face command; they say
    nothing about the user's run."""
    import logging

    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning user errors into one message and an exit code.

    ``--trust-code`` lets Hugging Face folders run their own Python for this command only:
    the opt-in is withdrawn when it returns (a later call in the same process, or the
    Python API after it, is not trusted by a flag given earlier)."""
    try:
        return _main(argv)
    finally:
        allow_remote_code(False)


def _main(argv: list[str] | None = None) -> int:
    """:func:`main` without withdrawing the ``--trust-code`` opt-in.

    The current folder is importable, as in other Python CLIs (``python -m``, uvicorn,
    pytest's rootdir): a config may name ``mypkg.nets:big`` for ``./mypkg/nets.py``."""
    import os
    import sys

    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    warnings.formatwarning = _format_warning
    # Hugging Face loads may run a folder's own Python only with --trust-code (never by a prompt)
    allow_remote_code("--trust-code" in (sys.argv[1:] if argv is None else argv))
    _quiet_library_noise()
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
    except (OSError, _safetensors_error()) as e:
        e = safetensors_os_error(e) or e
        # disk full, unwritable folder, vanished file: say which and why; files are written
        # atomically, so nothing finished was replaced by a half-written one
        where = f" ({e.filename})" if e.filename else ""
        err_console.print(f"[bold red]error:[/] cannot read or write a file{where}: {e.strerror or e}. "
                          "Finished results were not touched; free space or fix permissions, then re-run "
                          "(add --resume to continue a run).", highlight=False, soft_wrap=True)
        return 1
    except Exception as e:  # click's usage errors (typer vendors its own click)
        code = _click_error(e)
        if code is None:
            raise
        return code
    return 0


def _safetensors_error() -> type[BaseException]:
    try:
        from safetensors import SafetensorError
    except ImportError:
        return OSError
    return SafetensorError


def _click_classes(name: str) -> tuple[type, ...]:
    """``name`` from click and from typer's vendored copy, whichever are installed."""
    found = []
    for mod in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def _click_error(e: Exception) -> int | None:
    """A usage mistake (unknown flag or command, missing argument, a value of the wrong
    type) as one line with the command's usage, exit 2; ``None`` for anything else."""
    if isinstance(e, _click_classes("NoArgsIsHelpError")):
        e.show()
        return 0
    if isinstance(e, _click_classes("Abort")):
        return 1
    if not isinstance(e, _click_classes("ClickException")):
        return None
    ctx = getattr(e, "ctx", None)
    usage = ""
    if ctx is not None:
        import re

        usage = re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(), " ".join(ctx.get_usage().split()))
        usage = f" ({usage.replace('Usage: ', 'usage: ')}; see {ctx.command_path} --help)"
    message = " ".join(e.format_message().split())
    err_console.print(f"[bold red]error:[/] {message}{usage}", highlight=False, soft_wrap=True)
    return 2 if isinstance(e, _click_classes("UsageError")) else e.exit_code

