"""``kdistill compare`` and ``kdistill sweep``: a grid of runs in one folder, then statistics.

Every cell of the grid is an ordinary run (:func:`kdistill.engine.run.run_experiment`) in
its own folder ``<group>-s<seed>``: one per method (or config, or sweep point) and seed,
plus ``scratch-s<seed>``, the same student trained with cross-entropy alone, which every
method is compared with, seed by seed (a paired difference).

Teachers: by default one teacher **per seed**, trained inside the seed's first cell (the
scratch cell) and reused by every other cell of that seed through ``teacher.checkpoint``.
The spread over seeds then includes the teacher's own seed noise, which is what a user
re-running the whole pipeline sees; ``teacher="shared"`` trains one teacher in the very
first cell and reuses it everywhere (cheaper; the interval then holds only the student's
noise, for that one teacher). A teacher given by checkpoint or cache is used as is. Cells
whose teacher settings differ (a sweep over ``teacher.*`` or ``train.*``) get their own.

Resuming: a cell whose folder holds ``results.json`` is finished and skipped; an
unfinished one continues from its last checkpoint. A cell folder written with a different
config is refused, not silently mixed in.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import RunConfig, dump_config, load_config, validate_config
from ..engine.checkpoint import atomic_write_json, atomic_write_text
from ..errors import ConfigError, Interrupted, KdistillError
from .tables import SCRATCH, aggregate, collect_runs, find_run_dirs

TEACHER_MODES = ("per-seed", "shared")


@dataclass
class Cell:
    """One run of the grid."""

    group: str
    seed: int
    cfg: RunConfig
    overrides: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.group}-s{self.seed}"


def _with(cfg: RunConfig, updates: dict[str, Any]) -> RunConfig:
    raw = cfg.model_dump(mode="json")
    for dotted, value in updates.items():
        node = raw
        keys = dotted.split(".")
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    return validate_config(raw)


def _check_plain(cfg: RunConfig, label: str) -> None:
    if cfg.scheme:
        raise ConfigError(
            f"{label} has a scheme section ({cfg.scheme.get('name')!r}); compare and sweep run single-stage "
            "distillation configs. Remove the scheme section, or run each scheme with `kdistill train`."
        )


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise ConfigError(f"--seeds {text!r} must be comma-separated integers, e.g. 0,1,2.") from None
    if not seeds:
        raise ConfigError("--seeds needs at least one seed.")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r} repeats a seed.")
    return seeds


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=-]", "_", text)


def _method_spec(cfg: RunConfig, spec: str) -> dict | list:
    """``"at"`` -> ``{"name": "at"}``; ``"kd+at"`` -> two terms. The config's own settings are
    kept for a method of the same name (so ``method.temperature`` in the YAML still applies)."""
    names = [s for s in spec.split("+") if s]
    base = cfg.method if isinstance(cfg.method, list) else [cfg.method]
    by_name = {t.get("name", "kd"): t for t in base}
    terms = [dict(by_name.get(n, {"name": n})) for n in names]
    return terms[0] if len(terms) == 1 else terms


def plan_methods(cfg: RunConfig, methods: list[str], seeds: list[int]) -> list[Cell]:
    """Scratch + one cell per method, for every seed."""
    _check_plain(cfg, "The config")
    methods = [m.strip() for m in methods if m.strip()]
    if not methods:
        raise ConfigError("--methods needs at least one method name (see `kdistill list methods`).")
    if SCRATCH in methods or len(set(methods)) != len(methods):
        raise ConfigError(
            f"--methods {','.join(methods)}: names must be distinct and not {SCRATCH!r} "
            "(the scratch student is always included)."
        )
    cells = []
    for seed in seeds:
        cells.append(Cell(SCRATCH, seed, _with(cfg, {"method": {"name": "ce"}, "train.seed": seed}), {}))
        for m in methods:
            cells.append(
                Cell(
                    _safe(m),
                    seed,
                    _with(cfg, {"method": _method_spec(cfg, m), "train.seed": seed}),
                    {"method": m},
                )
            )
    return cells


def plan_configs(configs: list[tuple[str, RunConfig]], seeds: list[int]) -> list[Cell]:
    """Scratch (the first config's student) + one cell per config, for every seed."""
    labels = [label for label, _ in configs]
    for label, c in configs:
        _check_plain(c, f"Config {label!r}")
    if len(set(labels)) != len(labels) or SCRATCH in labels:
        raise ConfigError(f"Config names {labels} must be distinct and not {SCRATCH!r}; rename the files.")
    data0 = configs[0][1].data.model_dump()
    for label, c in configs[1:]:
        if c.data.model_dump() != data0:
            raise ConfigError(
                f"Config {label!r} uses different data from {labels[0]!r}; a comparison needs one "
                "dataset (same data section)."
            )
    cells = []
    for seed in seeds:
        cells.append(Cell(SCRATCH, seed, _with(configs[0][1], {"method": {"name": "ce"}, "train.seed": seed}), {}))
        for label, c in configs:
            cells.append(Cell(_safe(label), seed, _with(c, {"train.seed": seed}), {"config": label}))
    return cells


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["method.temperature=1,2,4", "method.alpha=0.5,0.9"]`` -> ``{key: [values]}``."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key or not text:
            raise ConfigError(f"--grid {item!r} must look like section.key=v1,v2,...")
        try:
            # a YAML list allows values that contain commas: student.kwargs.hidden=[[16],[32,32]]
            values = yaml.safe_load(text) if text.startswith("[") else [yaml.safe_load(v) for v in text.split(",")]
        except yaml.YAMLError as e:
            raise ConfigError(f"--grid {item!r}: values are not valid YAML ({e}).") from None
        if not isinstance(values, list) or not values:
            raise ConfigError(f"--grid {item!r} must look like section.key=v1,v2,...")
        if key in grid:
            raise ConfigError(f"--grid names {key!r} twice.")
        if key == "train.seed":
            raise ConfigError("Use --seeds for seeds, not --grid train.seed=...")
        grid[key] = values
    if not grid:
        raise ConfigError("sweep needs at least one --grid section.key=v1,v2,...")
    return grid


def _short_keys(keys: list[str]) -> dict[str, str]:
    last = [k.split(".")[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def plan_sweep(cfg: RunConfig, grid: dict[str, list[Any]], seeds: list[int]) -> list[Cell]:
    """Scratch + one cell per point of the grid's Cartesian product, for every seed."""
    _check_plain(cfg, "The config")
    keys = list(grid)
    short = _short_keys(keys)
    points = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]
    cells = []
    for seed in seeds:
        cells.append(Cell(SCRATCH, seed, _with(cfg, {"method": {"name": "ce"}, "train.seed": seed}), {}))
        for p in points:
            group = _safe("_".join(f"{short[k]}{v}" for k, v in p.items()))
            cells.append(Cell(group, seed, _with(cfg, {**p, "train.seed": seed}), p))
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise ConfigError("Two grid points give the same folder name; use distinct values.")
    return cells


# -- running -------------------------------------------------------------------------------
def _teacher_key(cell: Cell, mode: str) -> str | None:
    """Cells with the same key share one trained teacher; ``None``: nothing to train."""
    t = cell.cfg.teacher
    if t is None or t.cache is not None:
        return None
    if (t.model is not None and t.checkpoint) or (t.ensemble and all(m.checkpoint for m in t.ensemble)):
        return None
    train = cell.cfg.teacher_train().model_dump()
    if mode == "shared":
        train.pop("seed")
    return json.dumps([t.model_dump(), train, cell.cfg.data.model_dump()], sort_keys=True, default=str)


def _teacher_paths(cell_dir: Path, cfg: RunConfig) -> list[str]:
    t = cfg.teacher
    if t.ensemble:
        return [str((cell_dir / f"teacher{i}" / "model.safetensors").resolve()) for i in range(len(t.ensemble))]
    return [str((cell_dir / "teacher" / "model.safetensors").resolve())]


def _reuse_teacher(cfg: RunConfig, paths: list[str]) -> RunConfig:
    if cfg.teacher.ensemble:
        pairs = zip(cfg.teacher.ensemble, paths, strict=True)
        members = [m.model_dump() | {"checkpoint": p} for m, p in pairs]
        return _with(cfg, {"teacher.ensemble": members})
    return _with(cfg, {"teacher.checkpoint": paths[0]})


def _first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            d = _first_difference(va, vb, f"{prefix}{k}.")
            if d:
                return d
        elif va != vb:
            return f"{prefix}{k}: {va!r} then, {vb!r} now"
    return ""


def _check_cell_config(cell_dir: Path, cfg: RunConfig) -> None:
    f = cell_dir / "config.yaml"
    if not f.is_file():
        return
    text = dump_config(cfg)
    old = f.read_text()
    if old == text:
        return
    try:
        diff = _first_difference(yaml.safe_load(old) or {}, yaml.safe_load(text) or {})
    except yaml.YAMLError:
        diff = "config.yaml is damaged"
    raise ConfigError(
        f"Cell folder {cell_dir} was started with a different config ({diff or 'formatting'}). Delete that "
        "folder to redo it, or write this grid to another --out folder."
    )


def _record_teacher_latency(cell_dir: Path, log: Callable[[str], None]) -> None:
    """Measure the teacher's CPU latency once, beside the cell that holds or first used it."""
    from . import recompute
    from .tables import load_run

    f = cell_dir / "teacher_latency.json"
    if f.exists():
        return
    try:
        run = load_run(cell_dir)
        if not run.teacher.get("model") or run.teacher_latency() is not None:
            return
        model = recompute.teacher_model(run)
        atomic_write_json(f, recompute.measure_latency(model, run.teacher["input_shape"]))
    except (recompute.RecomputeError, KeyError) as e:
        log(f"Teacher latency not measured for {cell_dir.name}: {e}")
    except Exception as e:  # noqa: BLE001  (a report extra must not fail a finished grid)
        log(f"Teacher latency not measured for {cell_dir.name}: {type(e).__name__}: {e}")


def run_grid(
    cells: list[Cell],
    out: str | Path,
    teacher: str = "per-seed",
    log: Callable[[str], None] = print,
    trust: bool = False,
    kind: str = "compare",
) -> dict[str, Any]:
    """Run every unfinished cell into ``out/<cell>``, then aggregate into ``compare.json`` and
    ``compare.md``. Returns the aggregate."""
    from ..engine.run import run_experiment

    if teacher not in TEACHER_MODES:
        raise ConfigError(f"teacher mode {teacher!r} unknown; use one of {', '.join(TEACHER_MODES)}.")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"Cannot create the compare folder {out}: {e.strerror or e}.") from None
    trained: dict[str, list[str]] = {}
    failed: list[dict[str, str]] = []
    measured: set[str] = set()
    done, ran = 0, 0
    for i, cell in enumerate(cells, 1):
        cell_dir = out / cell.name
        cfg = cell.cfg
        key = _teacher_key(cell, teacher)
        if key is not None and key in trained:
            cfg = _reuse_teacher(cfg, trained[key])
        _check_cell_config(cell_dir, cfg)
        if (cell_dir / "results.json").is_file():
            log(f"[{i}/{len(cells)}] {cell.name}: finished earlier, skipped")
            done += 1
        else:
            log(f"[{i}/{len(cells)}] {cell.name}: running")
            try:
                run_experiment(cfg, run_dir=cell_dir, resume=True, log=log, trust=trust)
            except Interrupted:
                raise  # a checkpoint was saved; the same command resumes the grid
            except KdistillError as e:
                # one method that does not fit this student must not cost the rest of the grid
                log(f"[{i}/{len(cells)}] {cell.name}: failed: {e}")
                failed.append({"run": cell.name, "reason": f"failed: {e}"})
                continue
            ran += 1
        if key is not None and key not in trained:
            trained[key] = _teacher_paths(cell_dir, cfg)
        t = cfg.teacher
        ckpt = None
        if t is not None and t.model:
            ckpt = t.checkpoint or (trained[key][0] if key in trained else None)
        if ckpt and ckpt not in measured:
            measured.add(ckpt)
            _record_teacher_latency(cell_dir, log)
    failed_names = {f["run"] for f in failed}
    records, skipped = collect_runs([out / c.name for c in cells if c.name not in failed_names])
    for s in skipped:
        log(f"skipping {s['run']}: {s['reason']}")
    if not records:
        reasons = "; ".join(f"{s['run']}: {s['reason']}" for s in failed + skipped)
        raise ConfigError(f"No cell of the grid finished ({reasons}).")
    agg = aggregate(records, failed + skipped) | {"failed": failed}
    plan = {
        "kind": kind,
        "teacher": teacher,
        "cells": [{"name": c.name, "group": c.group, "seed": c.seed, "overrides": c.overrides} for c in cells],
        "ran": ran,
        "skipped_finished": done,
    }
    write_summary(out, agg, plan)
    return agg | {"plan": plan, "out": str(out)}


def write_summary(out: Path, agg: dict[str, Any], plan: dict[str, Any] | None = None) -> None:
    """``compare.json`` (plan + aggregate) and ``compare.md`` (the table and its legend)."""
    from .html import render_markdown, summary_blocks

    atomic_write_json(out / "compare.json", {"plan": plan or {}, "aggregate": agg})
    atomic_write_text(out / "compare.md", render_markdown(summary_blocks(agg, f"kdistill comparison {out.name}")))


def compare(
    config: str | Path | None,
    methods: list[str] | None = None,
    seeds: list[int] = (0,),
    configs: list[str | Path] | None = None,
    overrides: list[str] = (),
    out: str | Path | None = None,
    teacher: str = "per-seed",
    log: Callable[[str], None] = print,
    trust: bool = False,
) -> dict[str, Any]:
    """Compare methods (on one config) or configs, over seeds. See the module docstring."""
    if configs:
        if methods:
            raise ConfigError("Give either --methods (one config) or several configs, not both.")
        loaded = [(Path(c).stem, load_config(c, list(overrides))) for c in configs]
        cells = plan_configs(loaded, list(seeds))
        base = loaded[0][1]
        stem = "+".join(label for label, _ in loaded)
    else:
        if config is None:
            raise ConfigError("compare needs a config file (with --methods) or several config files.")
        if not methods:
            raise ConfigError("compare needs --methods m1,m2 (see `kdistill list methods`) or several configs.")
        base = load_config(config, list(overrides))
        cells = plan_methods(base, methods, list(seeds))
        stem = Path(config).stem
    out = Path(out) if out else Path(base.output.dir) / f"compare-{_safe(stem)}"
    return run_grid(cells, out, teacher, log, trust, "compare")


def sweep(
    config: str | Path,
    grid: list[str],
    seeds: list[int] = (0,),
    overrides: list[str] = (),
    out: str | Path | None = None,
    teacher: str = "per-seed",
    log: Callable[[str], None] = print,
    trust: bool = False,
) -> dict[str, Any]:
    """A grid over any config keys (Cartesian product), each point over ``seeds``."""
    base = load_config(config, list(overrides))
    cells = plan_sweep(base, parse_grid(grid), list(seeds))
    out = Path(out) if out else Path(base.output.dir) / f"sweep-{_safe(Path(config).stem)}"
    return run_grid(cells, out, teacher, log, trust, "sweep")


def aggregate_folder(root: str | Path) -> dict[str, Any]:
    """Re-aggregate an existing compare folder (no training)."""
    records, skipped = collect_runs(find_run_dirs(root))
    return aggregate(records, skipped)
