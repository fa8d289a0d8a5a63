"""``kdistill compare`` and ``kdistill sweep``: a grid of runs in one folder, then statistics.

Every cell of the grid is an ordinary run (:func:`kdistill.runs.run_experiment`, planned and
run by :mod:`kdistill.runs.grid`) in
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

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json, atomic_write_text
from ..config import load_config
from ..errors import ConfigError
from ..runs import named_models
from ..runs.grid import Cell, cell_name, parse_grid, parse_seeds, plan_configs, plan_methods, plan_sweep, run_cells
from .tables import aggregate, collect_runs

__all__ = ["compare", "parse_seeds", "run_grid", "sweep", "write_summary"]


def _record_teacher_latency(cell_dir: Path, log: Callable[[str], None], own: frozenset[str] = frozenset()) -> None:
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
        model = recompute.teacher_model(run, own)
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
    out = Path(out)
    # the model names of the grid's configs are the user's own: its records may name them
    own = frozenset().union(*(named_models(c.cfg) for c in cells))
    ran = run_cells(cells, out, teacher, log, trust, on_teacher=lambda d: _record_teacher_latency(d, log, own))
    failed, done, ran_n = ran["failed"], ran["skipped_finished"], ran["ran"]
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
        "ran": ran_n,
        "skipped_finished": done,
    }
    write_summary(out, agg, plan)
    return agg | {"plan": plan, "out": str(out), "own_models": sorted(own)}




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
    out = Path(out) if out else Path(base.output.dir) / f"compare-{cell_name(stem)}"
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
    out = Path(out) if out else Path(base.output.dir) / f"sweep-{cell_name(Path(config).stem)}"
    return run_grid(cells, out, teacher, log, trust, "sweep")
