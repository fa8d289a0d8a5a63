"""A grid of runs: planning the cells of ``kdistill compare`` and ``kdistill sweep`` (one
per method, config or sweep point, and seed, plus the scratch student) and running them
into one folder, each an ordinary run, with a teacher trained once and shared where the
cells allow it. Aggregation and tables live in :mod:`kdistill.report`."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import RunConfig, dump_config, parse_yaml, validate_config
from ..errors import ConfigError, Interrupted, KdistillError
from ..task import task_named
from ..teachers import TEACHER_KINDS

#: the group of the student trained with cross-entropy alone, which every method is compared with
SCRATCH = "scratch"
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


def cell_name(text: str) -> str:
    """``text`` as a safe folder-name part (anything but letters, digits and ``_.+=-`` -> ``_``)."""
    return re.sub(r"[^A-Za-z0-9_.+=-]", "_", text)


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
    """``"0,1,2"`` -> ``[0, 1, 2]`` (distinct integers)."""
    try:
        seeds = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise ConfigError(f"--seeds {text!r} must be comma-separated integers, e.g. 0,1,2.") from None
    if not seeds:
        raise ConfigError("--seeds needs at least one seed.")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r} repeats a seed.")
    return seeds


def _method_spec(cfg: RunConfig, spec: str) -> dict | list:
    """``"at"`` -> ``{"name": "at"}``; ``"kd+at"`` -> two terms. The config's own settings are
    kept for a method of the same name (so ``method.temperature`` in the YAML still applies)."""
    names = [s for s in spec.split("+") if s]
    base = cfg.method if isinstance(cfg.method, list) else [cfg.method]
    by_name = {t.get("name", "kd"): t for t in base}
    terms = [dict(by_name.get(n, {"name": n})) for n in names]
    return terms[0] if len(terms) == 1 else terms


def _scratch(cfg: RunConfig, seed: int) -> Cell:
    return Cell(SCRATCH, seed, _with(cfg, {"method": {"name": "ce"}, "train.seed": seed}), {})


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
        cells.append(_scratch(cfg, seed))
        for m in methods:
            cells.append(Cell(cell_name(m), seed, _with(cfg, {"method": _method_spec(cfg, m), "train.seed": seed}),
                              {"method": m}))
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
        cells.append(_scratch(configs[0][1], seed))
        for label, c in configs:
            cells.append(Cell(cell_name(label), seed, _with(c, {"train.seed": seed}), {"config": label}))
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
            values = (parse_yaml(text, f"--grid {key}") if text.startswith("[")
                      else [parse_yaml(v, f"--grid {key}") for v in text.split(",")])
        except ConfigError as e:
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
        cells.append(_scratch(cfg, seed))
        for p in points:
            group = cell_name("_".join(f"{short[k]}{v}" for k, v in p.items()))
            cells.append(Cell(group, seed, _with(cfg, {**p, "train.seed": seed}), p))
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise ConfigError("Two grid points give the same folder name; use distinct values.")
    return cells


# -- running -------------------------------------------------------------------------------
def teacher_key(cell: Cell, mode: str) -> str | None:
    """Cells with the same key share one trained teacher; ``None``: nothing to share (the
    cell's task decides; an image run asks its teacher kind)."""
    return task_named(cell.cfg.task).teacher_key(cell.cfg, mode)


def image_teacher_key(cfg: RunConfig, mode: str) -> str | None:
    """An image run's teacher key: its teacher kind's ``share_key`` hook (``None``: no
    teacher, or a kind that makes its own)."""
    t = cfg.teacher
    hook = TEACHER_KINDS.get(t.kind).share_key if t is not None else None
    return hook(cfg, mode) if hook is not None else None


def image_teacher_paths(cell_dir: Path, cfg: RunConfig) -> Any:
    return TEACHER_KINDS.get(cfg.teacher.kind).shared(cell_dir, cfg)


def image_reuse_teacher(cfg: RunConfig, shared: Any) -> RunConfig:
    return TEACHER_KINDS.get(cfg.teacher.kind).reuse(cfg, shared)


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
        diff = _first_difference(parse_yaml(old, "config.yaml") or {}, parse_yaml(text, "config.yaml") or {})
    except ConfigError:
        diff = "config.yaml is damaged"
    raise ConfigError(
        f"Cell folder {cell_dir} was started with a different config ({diff or 'formatting'}). Delete that "
        "folder to redo it, or write this grid to another --out folder."
    )


def run_cells(
    cells: list[Cell],
    out: str | Path,
    teacher: str = "per-seed",
    log: Callable[[str], None] = print,
    trust: bool = False,
    on_teacher: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Run every unfinished cell into ``out/<cell>``; a cell that fails is recorded, not fatal.

    ``teacher``: ``per-seed`` trains one teacher per seed and shares it across that seed's
    cells, ``shared`` one teacher for the whole grid. ``on_teacher(cell_dir)`` is called
    once per distinct teacher checkpoint, beside the first cell that used it.
    Returns ``{"ran", "skipped_finished", "failed": [{"run", "reason"}]}``.
    """
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
        task = task_named(cfg.task)
        key = teacher_key(cell, teacher)
        if key is not None and key in trained:
            cfg = task.reuse_teacher(cfg, trained[key])
        _check_cell_config(cell_dir, cfg)
        if (cell_dir / "results.json").is_file():
            log(f"[{i}/{len(cells)}] {cell.name}: finished earlier, skipped")
            done += 1
        else:
            log(f"[{i}/{len(cells)}] {cell.name}: running")
            try:
                task.run(cfg, run_dir=cell_dir, resume=True, log=log, trust=trust)
            except Interrupted:
                raise  # a checkpoint was saved; the same command resumes the grid
            except KdistillError as e:
                # one method that does not fit this student must not cost the rest of the grid
                log(f"[{i}/{len(cells)}] {cell.name}: failed: {e}")
                failed.append({"run": cell.name, "reason": f"failed: {e}"})
                continue
            ran += 1
        if key is not None and key not in trained:
            found = task.trained_teacher(cell_dir, cfg)
            if found:  # (a cell that needed no teacher leaves the training to the next one)
                trained[key] = found
        t = cfg.teacher
        ckpt = None
        if t is not None and t.model and hasattr(t, "checkpoint"):  # a zoo teacher, by checkpoint
            ckpt = t.checkpoint or (trained[key][0] if key in trained else None)
        if ckpt and ckpt not in measured:
            measured.add(ckpt)
            if on_teacher is not None:
                on_teacher(cell_dir)
    return {"ran": ran, "skipped_finished": done, "failed": failed}
