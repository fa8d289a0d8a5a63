"""One reading layer for the files kdistill opens that someone else may have written.

Every reader here treats the file as possibly hostile: it must be a regular file (a FIFO
would hang, ``/dev/zero`` would fill memory), at most a size limit per kind (the message
names the limit and the file), JSON must be an object of the expected shape (deep nesting
and wrong types are one :class:`~kdistill.errors.DataError` line, not a ``RecursionError``
or ``AttributeError``), arrays load without pickle and are checked against what their
meta claims. Nothing read here runs code.

Also here: whether Hugging Face loads may run a folder's own Python (``trust_remote_code``).
Only the CLI's ``--trust-code`` (or ``allow_remote_code(True)`` in Python) turns it on;
the loads pass ``False`` otherwise, so transformers never asks ``[y/N]`` on stdin.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .atomic import remove_entry, writer_alive
from .errors import DataError, KdistillError

MiB = 1 << 20
#: the largest file of each kind kdistill reads (bytes)
LIMITS: dict[str, int] = {
    "json": 64 * MiB,
    "label": 4096,
    "image": 256 * MiB,
    "jsonl_line": 16 * MiB,
    "text": 1 << 40,
    "array": 1 << 40,
}
#: the most classes a model.json or cache may claim (a larger head is a damaged or hostile file)
MAX_CLASSES = 10_000_000

_REMOTE_CODE = False


def allow_remote_code(flag: bool) -> None:
    """Let Hugging Face loads run a model folder's own Python (``--trust-code``)."""
    global _REMOTE_CODE
    _REMOTE_CODE = bool(flag)


def remote_code_allowed() -> bool:
    """The ``trust_remote_code`` every Hugging Face load passes (``False`` unless opted in)."""
    return _REMOTE_CODE


PICKLED_WEIGHTS = ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "model.ckpt.index")


def refuse_pickled_weights(folder: str | Path, error: type[KdistillError] = DataError) -> None:
    """Refuse a Hugging Face folder whose weights exist only as a pickle
    (``pytorch_model.bin``, ``*.bin``, ``*.pt``): loading one runs ``torch.load``."""
    folder = Path(folder)
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
    if pickled:
        raise error(f"{folder / pickled[0]} holds pickled weights, which can run arbitrary code when loaded; "
                    "nothing was loaded. Re-save the model with save_pretrained(..., safe_serialization=True) "
                    "to get model.safetensors.")


def _describe(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def inside(path: str | Path, root: str | Path) -> bool:
    """Whether ``path``, symlinks resolved, lies under ``root`` (resolved)."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
        return True
    except ValueError:
        return False


def check_regular(path: str | Path, kind: str = "json", root: str | Path | None = None,
                  limit: int | None = None) -> int:
    """The size of ``path`` after checking it is a regular file (symlinks followed, and kept
    under ``root`` when given) of at most the ``kind``'s limit; otherwise :class:`DataError`."""
    path = Path(path)
    if root is not None and not inside(path, root):
        raise DataError(f"{path} links to {path.resolve()}, outside {root}; it was not read.")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist.") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path} is {_describe(st.st_mode)}, not a file; it was not read.")
    _check_size(path, st.st_size, kind, limit)
    return st.st_size


def _check_size(path: Path, size: int, kind: str, limit: int | None) -> None:
    limit = LIMITS.get(kind, LIMITS["json"]) if limit is None else limit
    if size > limit:
        raise DataError(f"{path} is {size / MiB:.1f} MiB, more than the {limit / MiB:.1f} MiB a {kind} file may be; "
                        "it was not read.")


def read_bytes(path: str | Path, kind: str = "json", root: str | Path | None = None,
               limit: int | None = None) -> bytes:
    """The bytes of a regular file of at most the ``kind``'s limit. Opened without blocking
    and checked on the open descriptor, so a FIFO swapped in after a check cannot hang it."""
    path = Path(path)
    check_regular(path, kind, root, limit)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{path} is {_describe(st.st_mode)}, not a file; it was not read.")
        _check_size(path, st.st_size, kind, limit)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(st.st_size + 1)
    finally:
        os.close(fd)


def read_text(path: str | Path, kind: str = "json", root: str | Path | None = None) -> str:
    """A regular UTF-8 text file (see :func:`read_bytes`)."""
    raw = read_bytes(path, kind, root)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}); it was not read.") from None


def read_json(path: str | Path, schema: type[BaseModel] | None = None, error: type[KdistillError] = DataError,
              hint: str = "") -> dict[str, Any]:
    """A JSON object from ``path``, checked against ``schema`` when given; a damaged,
    deeply nested, oversized or mistyped file is one ``error`` line naming it (``hint``
    says what to do)."""
    path = Path(path)
    try:
        obj = json.loads(read_text(path, "json"))
    except DataError as e:
        raise error(f"{e}{hint}") from None
    except RecursionError:
        raise error(f"{path} is nested too deeply to be a kdistill record; it was not used.{hint}") from None
    except ValueError as e:
        raise error(f"{path} is damaged (not valid JSON: {e}).{hint}") from None
    if not isinstance(obj, dict):
        raise error(f"{path} holds a JSON {type(obj).__name__}, not an object; it was not used.{hint}")
    if schema is not None:
        validate(obj, schema, path, error, hint)
    return obj


def validate(obj: dict[str, Any], schema: type[BaseModel], path: str | Path,
             error: type[KdistillError] = DataError, hint: str = "") -> dict[str, Any]:
    """``obj`` if it fits ``schema`` (read from ``path``); else one ``error`` line."""
    try:
        schema.model_validate(obj)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        raise error(f"{path}: {where}: {first['msg']}; it was not used.{hint}") from None
    except RecursionError:
        raise error(f"{path} is nested too deeply to be a kdistill record; it was not used.{hint}") from None
    return obj


def load_npy(path: str | Path, mmap: bool = False, what: str = "array") -> np.ndarray:
    """A ``.npy`` array without pickle (an object array is refused), or :class:`DataError`."""
    path = Path(path)
    check_regular(path, "array")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path} is not a plain {what} file ({str(e).splitlines()[0]}); it was not used.") from None


def check_array(a: np.ndarray, path: str | Path, shape: tuple[int | None, ...] | None = None,
                kinds: str = "iuf", lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """``a`` if its shape (``None``: any length), dtype kind and value range are what its
    meta says; else :class:`DataError` naming ``path``."""
    if a.dtype.kind not in kinds:
        raise DataError(f"{path}: dtype {a.dtype} where {kinds!r} numbers were expected; it was not used.")
    if shape is not None and (a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape))):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise DataError(f"{path}: shape {tuple(a.shape)} where {want} was recorded (truncated or replaced?); "
                        "it was not used.")
    if a.size and (lo is not None or hi is not None):
        mn, mx = a.min(), a.max()
        if (lo is not None and mn < lo) or (hi is not None and mx > hi):
            raise DataError(f"{path}: values in [{mn}, {mx}] where [{lo}, {hi}] was expected; it was not used.")
    return a


# ---- the records kdistill writes and reads back --------------------------------------

class _Record(BaseModel):
    model_config = ConfigDict(extra="allow")


class ModelRecord(_Record):
    """``model.json`` of a run folder or its ``teacher/``."""
    model: str
    num_classes: int = Field(ge=1, le=MAX_CLASSES)
    input_shape: list[int] = Field(min_length=1, max_length=4)
    kwargs: dict[str, Any] | None = None


class ResultsRecord(_Record):
    """``results.json``: an object whose known sections are objects."""
    best: dict[str, Any] | None = None
    final: dict[str, Any] | None = None
    teacher: dict[str, Any] | None = None


class QuantizeRecord(_Record):
    """``int8-*/quantize.json``."""
    qat_graph: bool = False
    keep_float: list[str] = []
    reduce_range: bool = True


class FKDMeta(_Record):
    """``meta.json`` of a teacher cache (:mod:`kdistill.cache`)."""
    format: int | str
    num_classes: int = Field(ge=1, le=MAX_CLASSES)
    topk: int | None = Field(default=None, ge=1, le=MAX_CLASSES)
    views: int = Field(ge=1, le=1_000_000)
    features: list[str]
    augment: dict[str, Any] | None
    combine: str | None = None
    dataset: dict[str, Any]
    teacher: dict[str, Any]


class LMCacheMeta(_Record):
    """``meta.json`` of an LM top-k cache."""
    format: str
    k: int = Field(ge=1, le=MAX_CLASSES)
    vocab: int = Field(ge=1, le=MAX_CLASSES)
    rows: int = Field(ge=0)
    block: int = Field(ge=1, le=1 << 24)
    teacher: str
    tokenizer: str
    data: str
    index_dtype: Literal["int16", "int32"]


def shape_ok(shape: Any) -> bool:
    """Whether ``input_shape`` values are plausible (each dimension 1..2**20)."""
    return isinstance(shape, list) and all(isinstance(v, int) and 1 <= v <= 1 << 20 for v in shape)


# ---- writers' failures and leftovers ---------------------------------------------------

def safetensors_os_error(e: Exception, path: str | Path | None = None) -> OSError | None:
    """The :class:`OSError` inside a safetensors ``SafetensorError`` (disk full, permission:
    safetensors reports them as ``I/O error: No space left on device (os error 28)``), naming ``path``; ``None``
    when ``e`` is not such an error."""
    if type(e).__name__ != "SafetensorError":
        return None
    import re

    m = re.search(r"(?:code: |os error )(\d+)", str(e))
    code = int(m.group(1)) if m else 5  # EIO when safetensors does not say
    return OSError(code, os.strerror(code), None if path is None else str(path))


def remove_dead_temps(folder: str | Path, stem: str) -> list[str]:
    """Remove ``.<stem>.<pid>.*`` temporaries in ``folder`` whose writing process is gone
    (what a killed writer left); a write in progress is never touched. Returns the names."""
    import re

    pattern = re.compile(rf"^\.{re.escape(stem)}\.(?P<pid>\d+)\..*$")
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = pattern.match(p.name)
        if not m or writer_alive(int(m["pid"])):
            continue
        remove_entry(p)
        removed.append(p.name)
    return removed


def _numeric(annotation: Any) -> bool:
    """Whether a field's type takes numbers but not booleans."""
    import types as pytypes
    import typing

    union = typing.get_origin(annotation) in (typing.Union, pytypes.UnionType)
    types = set(typing.get_args(annotation)) if union else {annotation}
    return bool(types & {int, float}) and bool not in types


def refuse_bool_numbers(model: type[BaseModel], data: Any) -> Any:
    """A ``model_validator(mode="before")`` body: a boolean where a number belongs is an
    error, not 1.0 or 0 (YAML reads ``yes``/``no``/``on``/``off`` as booleans, so
    ``flip: yes`` would mean "mirror every image")."""
    if not isinstance(data, dict):
        return data
    for name, value in data.items():
        field = model.model_fields.get(name)
        if field is not None and isinstance(value, bool) and _numeric(field.annotation):
            raise ValueError(f"{name} takes a number, got {str(value).lower()} (YAML reads yes/no/on/off as "
                             f"true/false); write the number you mean")
    return data
