"""Files written whole or not at all: a temporary file beside the target, fsync'ed, then
renamed over it (a rename is atomic), so a reader sees the old file or the new one, never
half of one. A leaf module: every layer that writes a record uses it.

Every temporary name carries its writer's process id (``.<name>.<pid>.<random>.tmp``), so a
later start can tell the litter of a killed write from a write in progress
(:func:`kdistill.engine.checkpoint.remove_litter`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def user_mode(mode: int) -> int:
    """``mode`` less the process's umask: the permissions ``open`` would give a new file
    (``mkstemp``/``mkdtemp`` give 0600/0700 whatever the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def writer_alive(pid: int) -> bool:
    """Whether the process that named a temporary file (``.<name>.<pid>...``) still runs:
    its litter is removed only once it is gone."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_entry(path: Path) -> None:
    """Remove a leftover file or folder (a link is removed, never followed)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), user_mode(0o666))  # mkstemp makes 0600: a shared run folder stays readable
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
