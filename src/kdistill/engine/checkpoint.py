"""Checkpoints that survive a kill at any moment, and loading that never runs code.

A checkpoint is a folder ``checkpoints/<kind>-<step>/`` with ``model.safetensors``
(weights), ``train_state.pt`` (optimizer state and RNG states: tensors and plain
containers only, loaded with ``weights_only=True``) and ``state.json`` (epoch, step,
metrics, and the SHA-256 of both files). It is written into a temporary folder, each file
fsync'ed, then renamed into place: a rename is atomic, so a reader sees the old checkpoint
or the new one, never half of one. The newest ``keep`` folders of each kind stay; loading
takes the newest that passes its integrity check and warns about any it skips.

Every temporary name carries its writer's process id (``.<name>.<pid>.<random>``), so the
next start can tell the litter of a killed write from a write in progress
(:func:`remove_litter`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError as SafetensorsError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

# the writers moved to the leaf module kdistill.atomic; imported here too for callers of the old place
from ..atomic import atomic_write_bytes, atomic_write_json, atomic_write_text, remove_entry, user_mode, writer_alive  # noqa: F401
from ..atomic import fsync_dir as _fsync_dir
from ..errors import CheckpointError
from ..safe_read import safetensors_os_error


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{kind}-{step:09d}.{os.getpid()}."))
    os.chmod(tmp, user_mode(0o777))
    try:
        save_tensors(state_dict_tensors(model), tmp / "model.safetensors")
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
            _remove_atomically(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root, kind)[keep:]:
        _remove_atomically(old)
    return final


def _remove_atomically(folder: Path) -> None:
    """Remove a checkpoint folder so that a kill never leaves half of it under its own name:
    renamed first to ``.<name>.<pid>.tmp`` (litter :func:`remove_litter` removes once this
    process is gone), then deleted."""
    gone = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    os.replace(folder, gone)
    shutil.rmtree(gone, ignore_errors=True)


def save_tensors(tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.save_file``, with a disk-full or permission failure raised as an
    :class:`OSError` naming ``path`` (safetensors raises its own error type, which says
    neither)."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except Exception as e:
        err = safetensors_os_error(e, path)
        if err is None:
            raise
        raise err from None


# .<name>.<pid>.<tempfile's 8 random characters>[.tmp], or .<name>.<pid>.tmp
_TEMP = re.compile(r"^\..+\.(?P<pid>\d+)(\.[a-z0-9_]{8})?(\.tmp)?$")
# names of kdistill versions before the pid was part of them
_OLD_TEMP = re.compile(r"^\.((last|best)-\d{9}\.[a-z0-9_]{8}|.+\.[a-z0-9_]{8}\.tmp|model\.safetensors\.tmp)$")
OLD_TEMP_AGE_S = 600


def remove_litter(folder: str | Path) -> list[str]:
    """Remove what interrupted atomic writes left in ``folder``: temporary checkpoint folders
    and files whose writing process is gone (or, for names without a process id, that are
    older than :data:`OLD_TEMP_AGE_S`). A write in progress is never touched. Returns the
    names removed. Call it from the process that writes the folder (the main process)."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP.match(p.name)
        if m:
            stale = not writer_alive(int(m["pid"]))
        elif _OLD_TEMP.match(p.name):
            try:
                stale = time.time() - p.lstat().st_mtime > OLD_TEMP_AGE_S
            except OSError:
                continue
        else:
            continue
        if not stale:
            continue
        remove_entry(p)
        removed.append(p.name)
    return removed


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
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: state.json unreadable ({type(e).__name__}).") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256", {}), dict):
        raise CheckpointError(f"{path}: state.json is not a checkpoint record.")
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


def intact_checkpoints(root: str | Path, kind: str = "last") -> list[tuple[Path, dict[str, Any]]]:
    """Every checkpoint of ``kind`` that passes its checksums, newest first; the others are
    skipped with a warning."""
    out = []
    for path in list_checkpoints(root, kind):
        try:
            out.append((path, verify(path)))
        except CheckpointError as e:
            warnings.warn(f"Skipping corrupt checkpoint: {e}", stacklevel=2)
    return out


def read_resume_point(path: Path, meta: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The weights and training state of a checkpoint, checked before anything is restored
    from them: a file whose checksum matches can still be damaged (written damaged, or
    planted with its checksum), and a resume must then fall back, not crash half-way."""
    for key in ("epoch", "batch", "step"):
        if not isinstance(meta.get(key), int) or isinstance(meta.get(key), bool) or meta[key] < 0:
            raise CheckpointError(f"{path}: state.json has no valid {key!r}.")
    if not isinstance(meta.get("best", {}), dict) or not isinstance(meta.get("history", []), list) or \
            not all(isinstance(r, dict) for r in meta.get("history", [])):
        raise CheckpointError(f"{path}: state.json's best or history is damaged.")
    try:
        weights = load_file(str(path / "model.safetensors"))
    except (SafetensorsError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: model.safetensors is damaged ({e}).") from None
    ts = load_train_state(path)
    if not isinstance(ts, dict) or not isinstance(ts.get("optimizer"), dict):
        raise CheckpointError(f"{path}: train_state.pt holds no optimizer state.")
    rng = ts.get("rng_cpu")
    if not isinstance(rng, Tensor) or rng.dtype != torch.uint8:
        raise CheckpointError(f"{path}: train_state.pt holds no random-number-generator state.")
    return weights, ts


def load_train_state(path: Path) -> dict[str, Any]:
    f = path / "train_state.pt"
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    # weights_only runs no code, so whatever a damaged file raises is damage, said in one line
    except Exception as e:  # noqa: BLE001
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
        # the best checkpoint, else the newest; one damaged despite its checksums is skipped
        for ckpt, _ in intact_checkpoints(ckpts, "best") + intact_checkpoints(ckpts, "last"):
            try:
                return load_weights(ckpt / "model.safetensors")
            except CheckpointError as e:
                warnings.warn(f"Skipping damaged checkpoint: {e}", stacklevel=2)
        raise CheckpointError(f"{path}: no model.safetensors and no intact checkpoint inside.")
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
