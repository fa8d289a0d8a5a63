"""Checkpoints that survive a kill at any moment, and loading that never runs code.

A checkpoint is a folder ``checkpoints/<kind>-<step>/`` with ``model.safetensors``
(weights), ``train_state.pt`` (optimizer state and RNG states: tensors and plain
containers only, loaded with ``weights_only=True``) and ``state.json`` (epoch, step,
metrics, and the SHA-256 of both files). It is written into a temporary folder, each file
fsync'ed, then renamed into place: a rename is atomic, so a reader sees the old checkpoint
or the new one, never half of one. The newest ``keep`` folders of each kind stay; loading
takes the newest that passes its integrity check and warns about any it skips.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError as SafetensorsError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..errors import CheckpointError


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def state_dict_tensors(module: nn.Module | dict[str, Tensor]) -> dict[str, Tensor]:
    """A module's state dict (or a ready one, e.g. gathered from FSDP shards) as CPU tensors
    safetensors can write."""
    sd = module if isinstance(module, dict) else module.state_dict()
    # clone: safetensors refuses tensors that share storage (tied weights, views)
    return {k: v.detach().cpu().clone().contiguous() for k, v in sd.items()}


def checkpoint_path(root: str | Path, kind: str, step: int) -> Path:
    """The folder :func:`save_checkpoint` writes for ``kind`` at ``step``."""
    return Path(root) / f"{kind}-{step:09d}"


def save_checkpoint(
    root: str | Path,
    kind: str,
    step: int,
    model: nn.Module | dict[str, Tensor],
    state: dict[str, Any],
    train_state: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write ``root/<kind>-<step>/`` atomically and prune older ones of the same kind."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(root, kind, step)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{kind}-{step:09d}."))
    try:
        save_file(state_dict_tensors(model), str(tmp / "model.safetensors"))
        files = ["model.safetensors"]
        if train_state is not None:
            buf = io.BytesIO()
            torch.save(train_state, buf)
            (tmp / "train_state.pt").write_bytes(buf.getvalue())
            files.append("train_state.pt")
        meta = dict(state, kind=kind, step=step, sha256={f: _sha256(tmp / f) for f in files})
        (tmp / "state.json").write_text(json.dumps(meta, indent=2, default=str))
        for f in [*files, "state.json"]:
            with open(tmp / f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root, kind)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | Path, kind: str) -> list[Path]:
    """Checkpoint folders of ``kind``, newest (highest step) first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(f"{kind}-") and p.name[len(kind) + 1 :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(kind) + 1 :]), reverse=True)


def verify(path: Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint folder after checking every file's SHA-256."""
    try:
        meta = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: state.json unreadable ({e}).") from None
    for name, digest in meta.get("sha256", {}).items():
        f = path / name
        if not f.is_file() or _sha256(f) != digest:
            raise CheckpointError(f"{path}: {name} is missing or does not match its checksum.")
    return meta


def find_checkpoint(root: str | Path, kind: str = "last") -> tuple[Path, dict[str, Any]] | None:
    """The newest intact checkpoint of ``kind``; corrupt ones are skipped with a warning."""
    for path in list_checkpoints(root, kind):
        try:
            return path, verify(path)
        except CheckpointError as e:
            warnings.warn(f"Skipping corrupt checkpoint: {e}", stacklevel=2)
    return None


def load_train_state(path: Path) -> dict[str, Any]:
    f = path / "train_state.pt"
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as e:
        raise CheckpointError(f"{f}: cannot load the training state safely ({e}).") from None


def load_weights(path: str | Path, trust: bool = False) -> dict[str, Tensor]:
    """A state dict from a user's file, never executing code unless ``trust`` is set.

    ``.safetensors`` files and checkpoint folders load directly; torch files load with
    ``weights_only=True``. A file that needs full pickle is refused unless ``trust``
    (the ``--trust-checkpoint`` flag) accepts that risk.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "model.safetensors").is_file():
            return load_weights(path / "model.safetensors")
        ckpts = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found = find_checkpoint(ckpts, "best") or find_checkpoint(ckpts, "last")
        if not found:
            raise CheckpointError(f"{path}: no model.safetensors and no intact checkpoint inside.")
        return load_weights(found[0] / "model.safetensors")
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(path)!r} not found.")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorsError, OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a valid safetensors file ({e}).") from None
    with open(path, "rb") as f:
        head = f.read(4)
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):  # torch.save: a zip archive, or a legacy pickle
        raise CheckpointError(
            f"{path} is not a weights file: neither safetensors (.safetensors) nor a torch checkpoint (.pt/.pth)."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust:
            raise CheckpointError(
                f"{path} needs pickle to load, which can run arbitrary code. Convert it to "
                "safetensors, or pass --trust-checkpoint if you trust its source."
            ) from None
        warnings.warn(f"Loading {path} with full pickle (--trust-checkpoint).", stacklevel=2)
        obj = torch.load(path, map_location="cpu", weights_only=False)
        del e
    except (RuntimeError, OSError, EOFError) as e:
        raise CheckpointError(f"{path}: cannot read it as a torch file ({e}).") from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "student"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors.")
    return obj


#: key prefixes that wrappers add to a network's state-dict keys: DataParallel/DDP
#: (``module.``), Lightning and many training scripts (``model.``), ``torch.compile``
#: (``_orig_mod.``), and a kdistill distiller checkpoint (``student.``)
WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.", "student.")


def map_keys(state: dict[str, Tensor], expected: set[str]) -> tuple[dict[str, Tensor], list[str]]:
    """``state`` with wrapper prefixes removed (or ``model.`` added, for a network that is
    itself a wrapper) while that makes more keys match ``expected``; returns the mapped
    state and what was done (``["-module.", "+model."]``)."""
    done: list[str] = []

    def score(sd: dict) -> int:
        return sum(k in expected for k in sd)

    for _ in range(4):
        best, best_score, how = state, score(state), None
        for p in WRAPPER_PREFIXES:
            if any(k.startswith(p) for k in state):
                cand = {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
                whole = best_score == 0 and len(cand) == len(state)  # a prefix on every key: peel it
                if score(cand) > best_score or (whole and how is None):
                    best, best_score, how = cand, score(cand), f"-{p}"
        for p in ("model.",):
            cand = {p + k: v for k, v in state.items()}
            if score(cand) > best_score:
                best, best_score, how = cand, score(cand), f"+{p}"
        if how is None:
            break
        state = best
        done.append(how)
    return state, done


def _some(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def load_into(model: nn.Module, state: dict[str, Tensor], what: str = "model") -> dict[str, Any]:
    """Load ``state`` into ``model`` strictly, after mapping wrapper prefixes (``module.``,
    ``model.``, ``_orig_mod.``, ``student.``); a mismatch raises one short message: how many
    tensors are missing, unexpected or of another shape, with a few names each, and what a
    classifier head of another class count means. Returns ``{"tensors", "mapped"}``."""
    own = model.state_dict()
    state, mapped = map_keys(state, set(own))
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the {what}'s {len(own)} tensors are missing ({_some(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensors in the file are not in the {what} ({_some(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} have another shape (" + ", ".join(
                f"{k}: file {tuple(state[k].shape)}, {what} {tuple(own[k].shape)}" for k in shapes[:3]) + ")")
        hint = ""
        heads = [k for k in shapes if k.endswith("weight") and state[k].dim() == 2 and own[k].dim() == 2
                 and state[k].shape[1] == own[k].shape[1]]
        if heads:
            k = heads[-1]
            hint = (f" The file's classifier ({k}) has {state[k].shape[0]} classes and the data has "
                    f"{own[k].shape[0]}: use a checkpoint trained on these classes, or train a new head "
                    "(a teacher without a checkpoint is trained first; hf: models take kwargs {new_head: true}).")
        raise CheckpointError(f"The checkpoint does not fit the {what}: {'; '.join(parts)}.{hint}")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0:4]
        raise CheckpointError(f"The checkpoint does not fit the {what}: {' '.join(first)}") from None
    return {"tensors": len(state), "mapped": mapped}
