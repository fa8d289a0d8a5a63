"""The run folder: where it is, who writes it, and the deployable model files in it.

Every process of a multi-process run computes the same results; only the main process
writes files, and the others wait (:func:`sync_processes`) where they must read them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from torch import nn

from ..atomic import atomic_write_json, atomic_write_text
from ..config import RunConfig, dump_config
from ..distributed import is_main_process, sync_processes  # noqa: F401 (re-exported by kdistill.runs)
from ..engine.checkpoint import save_tensors, state_dict_tensors
from ..errors import ConfigError, KdistillError
from ..safe_read import read_text


def write_json(path: Path, obj: Any) -> None:
    """Write a run folder's JSON file from the main process only. Every process of a
    multi-process run computes the same record; one writer keeps the file that of the
    process whose weights are saved (see :func:`save_model`)."""
    if is_main_process():
        atomic_write_json(path, obj)


def save_model(run_dir: Path, model: nn.Module, record: dict[str, Any]) -> None:
    """``model.safetensors`` + ``model.json``: the deployable network and how to rebuild it."""
    if not is_main_process():
        return
    run_dir = Path(run_dir)
    tmp = run_dir / f".model.safetensors.{os.getpid()}.tmp"
    try:
        save_tensors(state_dict_tensors(model), tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(run_dir / "model.safetensors")
    atomic_write_json(run_dir / "model.json", record)


def run_dir_for(cfg: RunConfig, run_dir: str | Path | None, label: str | None = None) -> Path:
    """``run_dir`` if given, else ``output.dir/output.name`` (default: a time stamp, the
    method names or ``label`` (a scheme's name) and the student)."""
    if run_dir is not None:
        return Path(run_dir)
    what = label or "+".join(cfg.method_names())
    name = cfg.output.name or f"{time.strftime('%Y%m%d-%H%M%S')}-{what}-{cfg.student.model.replace(':', '_')}"
    return Path(cfg.output.dir) / name


def check_resumable(cfg: RunConfig, run_dir: str | Path | None = None) -> Path:
    """The folder ``--resume`` would continue, or a :class:`ConfigError` when there is none
    (a misspelt folder would otherwise start a fresh run silently)."""
    label = (cfg.scheme or {}).get("name") if cfg.scheme else None
    if run_dir is None and not cfg.output.name:
        return unfinished_run(cfg, label)
    path = run_dir_for(cfg, run_dir, label)
    if not path.is_dir():
        hint = "" if run_dir is not None or cfg.output.name else (
            " Without output.name each run gets a new time-stamped folder: pass the folder with --run-dir.")
        raise ConfigError(f"--resume: {path} does not exist, so there is nothing to resume.{hint} "
                          "Drop --resume to start a new run.")
    return path


def unfinished_run(cfg: RunConfig, label: str | None = None) -> Path:
    """The one unfinished run of this config in ``output.dir`` (a time-stamped folder with
    this config's ``config.yaml`` and no ``results.json``): what ``--resume`` continues after
    a kill, when no SIGTERM message named the folder. None or several: :class:`ConfigError`."""
    import yaml

    what = label or "+".join(cfg.method_names())
    suffix = f"-{what}-{cfg.student.model.replace(':', '_')}"
    def comparable(d):  # --quiet sets train.progress: the same run either way
        (d.get("train") or {}).pop("progress", None) if isinstance(d, dict) else None
        return d

    want = comparable(yaml.safe_load(dump_config(cfg)))
    found = []
    for p in sorted(Path(cfg.output.dir).glob(f"*{suffix}"), reverse=True):  # time stamps: newest first
        if (p / "results.json").exists() or not (p / "config.yaml").is_file():
            continue
        try:
            same = comparable(yaml.safe_load(read_text(p / "config.yaml", "json"))) == want
        except (KdistillError, yaml.YAMLError):
            same = False
        if same:
            found.append(p)
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(f"--resume: no unfinished run of this config in {cfg.output.dir}/ (a folder *{suffix} "
                          "with this config.yaml and no results.json). Pass the folder with --run-dir, or drop "
                          "--resume to start a new run.")
    raise ConfigError(f"--resume: {len(found)} unfinished runs of this config in {cfg.output.dir}/ "
                      f"({', '.join(p.name for p in found[:4])}); pass the one to continue with --run-dir.")


def open_run_dir(cfg: RunConfig, run_dir: str | Path | None = None, resume: bool = False,
                 label: str | None = None) -> Path:
    """Create the run folder and write its ``config.yaml``; refuse a finished run's folder
    unless resuming (a rerun must not overwrite finished results)."""
    path = run_dir_for(cfg, run_dir, label)
    if (path / "results.json").exists() and not resume:
        raise ConfigError(f"Run folder {path} already holds a finished run; pick another output.name or pass --resume.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        if is_main_process():
            atomic_write_text(path / "config.yaml", dump_config(cfg))
    except OSError as e:
        raise ConfigError(f"Cannot write to the run folder {path}: {e.strerror or e}.") from None
    return path
