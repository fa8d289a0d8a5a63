"""Run one benchmark study and write its table: ``DIR/<study>/RESULTS.md`` and ``results.json``.

    python benchmarks/studies/run_study.py hinton_fmnist --out bench-out --seeds 0,1,2
    python benchmarks/studies/run_study.py takd_mnist1d --out bench-out --epochs-scale 0.1 --device cpu
    python benchmarks/studies/run_study.py methods_fmnist --out bench-out --max-minutes 8

Studies are defined in ``studies.py`` (see README.md for what each reproduces and what it
costs). Every cell is one run folder ``DIR/<study>/<group>-s<seed>``; a folder holding
``results.json`` is finished and skipped, so an interrupted study resumes where it stopped.
Teachers are cells of their own, trained once per seed and read by the cells they teach
through ``teacher.checkpoint``.

The table gives, per row, mean +- sample std over seeds of the best-epoch test accuracy
(epoch chosen on the 10% validation split) and of the last-epoch test accuracy, and the
paired difference to the student alone over the seeds both have (statistics from
``kdistill.report.tables``). Each row names the command(s), git commit(s), hardware, seeds,
epochs and summed wall time of the cells it comes from (``study_cell.json`` in each cell).

``--max-minutes`` stops starting new cells once the budget is spent; the table is then
written from the finished cells and marked PARTIAL, listing the cells not run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from studies import STUDIES, CellSpec, Study  # noqa: E402

from kdistill.config import dump_config, parse_override, validate_config  # noqa: E402
from kdistill.engine.checkpoint import atomic_write_json, atomic_write_text  # noqa: E402
from kdistill.errors import ConfigError, KdistillError  # noqa: E402
from kdistill.report.tables import paired_difference, summarize  # noqa: E402

TINY = "tiny"
_TRANSFER_NAME = re.compile(r"mnist1d-n(?P<n>\d+)-seed(?P<seed>-?\d+)-len(?P<length>\d+)\.npz")


# -- provenance ----------------------------------------------------------------------------
def git_commit() -> str:
    """``git rev-parse HEAD`` of the checkout this file lives in (``+dirty`` if it differs);
    ``KDISTILL_COMMIT`` names it where the tree was copied without its .git (a GPU machine)."""
    if os.environ.get("KDISTILL_COMMIT"):
        return os.environ["KDISTILL_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+dirty" if dirty else "")


def hardware(device: str) -> str:
    """The GPU's name on CUDA, else the CPU model and core count from /proc/cpuinfo."""
    import torch

    from kdistill.devices import resolve_device

    if resolve_device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores (CPU, torch {torch.__version__})"


# -- planning ------------------------------------------------------------------------------
def scale_epochs(epochs: int, scale: float | str) -> int:
    """``epochs * scale`` rounded, at least 1; ``tiny`` is 1."""
    if scale == TINY:
        return 1
    return max(1, round(epochs * float(scale)))


def _set(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        if not isinstance(tree.get(k), dict):
            tree[k] = {}
        tree = tree[k]
    tree[keys[-1]] = value


def _override(raw: dict, key: str, value: Any) -> None:
    """``--set key=value`` on one cell: ``scheme.*``, ``teacher.*`` and ``data.transfer.*``
    only reach the cells that have that section."""
    parts = key.split(".")
    if parts[0] in ("scheme", "teacher") and not raw.get(parts[0]):
        return
    if parts[:2] == ["data", "transfer"] and not (raw.get("data") or {}).get("transfer"):
        return
    _set(raw, key, copy.deepcopy(value))


def transfer_file(study: Study, study_dir: Path, seed: int, raw: dict, overrides: list[tuple[str, Any]]) -> Path:
    """The one generated MNIST-1D transfer set of generator ``seed`` that every cell of the
    study reads a prefix of (the largest size any cell asks for): generating 100k MNIST-1D
    samples takes about a minute of single-threaded CPU, so it is done once per study, not
    once per cell, and the smaller transfer sets are nested in the larger ones."""
    sizes = []
    for spec in study.cells:
        cell = copy.deepcopy(spec.config)
        for key, value in overrides:
            _override(cell, key, value)
        t = (cell.get("data") or {}).get("transfer")
        if t and t.get("source", "mnist1d") == "mnist1d" and t.get("seed", 1) == seed:
            sizes.append(int(t.get("size", 25000)))
    length = int(((raw.get("data") or {}).get("options") or {}).get("length", 40))
    return study_dir / "_transfer" / f"mnist1d-n{max(sizes)}-seed{seed}-len{length}.npz"


def ensure_transfer_file(raw: dict, log) -> None:
    """Generate the cell's transfer file if it is one of ours and does not exist yet."""
    import numpy as np

    from kdistill.data import mnist1d_transfer

    t = (raw.get("data") or {}).get("transfer") or {}
    path = Path(t.get("path") or "")
    if t.get("source") != "npz" or path.parent.name != "_transfer" or path.is_file():
        return
    m = _TRANSFER_NAME.fullmatch(path.name)
    if m is None:
        return
    n, seed, length = (int(m.group(k)) for k in ("n", "seed", "length"))
    log(f"Generating {n} MNIST-1D transfer samples (generator seed {seed}) into {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    x = mnist1d_transfer(n, seed=seed, length=length).x.numpy().astype(np.float32)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x=x)
    tmp.replace(path)


def cell_config(study: Study, spec: CellSpec, seed: int, study_dir: Path, scale: float | str, device: str,
                overrides: list[tuple[str, Any]]) -> dict[str, Any]:
    """The full run config of ``spec`` for ``seed`` (epochs scaled, teacher pointed at its cell)."""
    raw = copy.deepcopy(spec.config)
    train = raw.setdefault("train", {})
    train["seed"] = seed
    train["device"] = device
    train["epochs"] = scale_epochs(train.get("epochs", 10), scale)
    terms = raw.get("method") if isinstance(raw.get("method"), list) else [raw.get("method") or {}]
    for term in terms:
        if isinstance(term.get("init_epochs"), int) and term["init_epochs"] > 0:
            term["init_epochs"] = scale_epochs(term["init_epochs"], scale)
    sch = raw.get("scheme") or {}
    if isinstance(sch.get("specialist_train"), dict) and "epochs" in sch["specialist_train"]:
        sch["specialist_train"]["epochs"] = scale_epochs(sch["specialist_train"]["epochs"], scale)
    if spec.teacher_from is not None:
        t = study.cell(spec.teacher_from).config["student"]
        raw["teacher"] = {"model": t["model"], "kwargs": dict(t.get("kwargs") or {}),
                          "checkpoint": str((study_dir / f"{spec.teacher_from}-s{seed}" / "model.safetensors").resolve())}
    for key, value in overrides:
        _override(raw, key, value)
    transfer = (raw.get("data") or {}).get("transfer")
    if transfer and transfer.get("source", "mnist1d") == "mnist1d":
        raw["data"]["transfer"] = {"source": "npz", "size": transfer.get("size", 25000),
                                   "path": str(transfer_file(study, study_dir, transfer.get("seed", 1), raw, overrides))}
    raw["output"] = {"dir": str(study_dir), "name": f"{spec.group}-s{seed}"}
    return raw


def plan(study: Study, seeds: list[int], only: list[str] | None = None) -> list[tuple[CellSpec, int]]:
    """Cells in run order: seed by seed, each seed's cells in definition order (teachers first).

    ``only`` keeps the named groups (a teacher they need must be among them or finished)."""
    if only is not None:
        unknown = sorted(set(only) - {c.group for c in study.cells})
        if unknown:
            raise ConfigError(f"--only names unknown group(s) {unknown} of study {study.name!r}; its groups: "
                              f"{', '.join(c.group for c in study.cells)}.")
    order = []
    for i, seed in enumerate(seeds):
        for spec in study.cells:
            if (spec.first_seed_only and i > 0) or (only is not None and spec.group not in only):
                continue
            order.append((spec, seed))
    return order


# -- running -------------------------------------------------------------------------------
#: methods that read nothing of the teacher but its logits, all a teacher cache needs to hold
LOGIT_METHODS = {"kd", "dkd", "dist", "ce", "mlkd", "ctkd", "skd"}


def use_teacher_cache(raw: dict[str, Any], log) -> str | None:
    """Point a distilled cell at a cache of its teacher's outputs instead of the live teacher.

    The cache (``kdistill.cache``: logits of every training sample plus the test/val sets,
    with the data's and the teacher's fingerprints) is built once per teacher cell and data
    config, in ``<teacher cell>/teacher_cache-<hash of the data config>``, and then read by
    every cell it fits. It fits when the cell sees each training sample as stored: no
    augmentation, no transfer set, and a method that reads logits only. The arithmetic is the
    live teacher's; what it saves is the teacher's forward pass on every step.

    Returns the cache's path, or None (the cell keeps its live teacher; the log says why).
    """
    import hashlib

    from kdistill.runs import cache_from_config

    data = raw.get("data") or {}
    terms = raw["method"] if isinstance(raw.get("method"), list) else [raw.get("method") or {}]
    others = sorted({t.get("name", "kd") for t in terms} - LOGIT_METHODS)
    why = ("its data is augmented" if data.get("augment") else "it has a transfer set" if data.get("transfer")
           else f"{', '.join(others)} read(s) more than the teacher's logits" if others else None)
    if why:
        log(f"    live teacher: {why}")
        return None
    key = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(raw["teacher"]["checkpoint"]).parent / f"teacher_cache-{key}"
    if not (path / "meta.json").is_file():
        t0 = time.perf_counter()
        cache_from_config(validate_config(raw), path, overwrite=True)
        log(f"    teacher cache {path} built in {time.perf_counter() - t0:.1f} s")
    raw["teacher"] = {"cache": str(path)}
    return str(path)


def run_cell(raw: dict[str, Any], cell_dir: Path, log) -> None:
    from kdistill.runs import run_experiment
    from kdistill.schemes import run_scheme

    cfg = validate_config(raw)
    old = cell_dir / "config.yaml"
    if old.is_file() and old.read_text() != dump_config(cfg):
        # an unfinished cell continues from its checkpoint only under the config it started with
        raise ConfigError(
            f"Cell folder {cell_dir} was started with a different config (other --epochs-scale, --set or "
            "code?). Delete that folder to redo it, or write to another --out folder."
        )
    if cfg.scheme:
        run_scheme(cfg, run_dir=cell_dir, resume=True, log=log)
    else:
        run_experiment(cfg, run_dir=cell_dir, resume=True, log=log)


def run_study(name: str, out: str | Path, seeds: list[int], scale: float | str = 1.0, device: str = "auto",
              max_minutes: float | None = None, overrides: list[str] = (), command: str | None = None,
              only: list[str] | None = None, log=print, cache_teachers: bool = False) -> dict[str, Any]:
    """Run every unfinished cell of study ``name`` into ``out/name`` and write the table.

    ``cache_teachers``: distilled cells that can (see :func:`use_teacher_cache`) read a cache
    of their teacher's outputs instead of running the teacher on every step."""
    if name not in STUDIES:
        raise ConfigError(f"Unknown study {name!r}; known: {', '.join(STUDIES)}.")
    study = STUDIES[name]()
    cells = plan(study, seeds, only)
    parsed = [parse_override(o) for o in overrides]
    study_dir = Path(out) / name
    study_dir.mkdir(parents=True, exist_ok=True)
    command = command or " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    commit, hw = git_commit(), hardware(device)
    start = time.monotonic()
    not_run: list[str] = []
    for i, (spec, seed) in enumerate(cells, 1):
        cell_dir = study_dir / f"{spec.group}-s{seed}"
        if (cell_dir / "results.json").is_file():
            log(f"[{i}/{len(cells)}] {cell_dir.name}: finished earlier, skipped")
            continue
        spent = (time.monotonic() - start) / 60
        if max_minutes is not None and spent >= max_minutes:
            log(f"[{i}/{len(cells)}] {cell_dir.name}: not started, the {max_minutes:g}-minute budget is spent")
            not_run.append(cell_dir.name)
            continue
        if spec.teacher_from and not (study_dir / f"{spec.teacher_from}-s{seed}" / "results.json").is_file():
            log(f"[{i}/{len(cells)}] {cell_dir.name}: not started, its teacher cell {spec.teacher_from}-s{seed} "
                "has no results")
            not_run.append(cell_dir.name)
            continue
        raw = cell_config(study, spec, seed, study_dir, scale, device, parsed)
        log(f"[{i}/{len(cells)}] {cell_dir.name}: running")
        t0 = time.perf_counter()
        cache = use_teacher_cache(raw, log) if cache_teachers and spec.teacher_from else None
        ensure_transfer_file(raw, log)
        run_cell(raw, cell_dir, log)
        atomic_write_json(cell_dir / "study_cell.json", {
            "study": name, "group": spec.group, "seed": seed, "role": spec.role,
            "epochs": raw["train"]["epochs"], "epochs_scale": scale, "wall_s": round(time.perf_counter() - t0, 2),
            "command": command, "commit": commit, "hardware": hw,
            **({"teacher_cache": cache} if cache else {}),
        })
    result = build_table(study, study_dir, seeds, not_run)
    result["invocation"] = {"command": command, "commit": commit, "hardware": hw, "seeds": seeds,
                            "epochs_scale": scale, "max_minutes": max_minutes,
                            "wall_s": round(time.monotonic() - start, 2)}
    atomic_write_json(study_dir / "results.json", result)
    atomic_write_text(study_dir / "RESULTS.md", render_markdown(study, result))
    return result


# -- the table -----------------------------------------------------------------------------
def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _stage_values(cell_dir: Path, res: dict[str, Any], stage: str) -> tuple[float | None, float | None, float | None]:
    """(last test acc, best test acc, val acc at the best epoch) of one scheme stage: from the
    stage's own run folder where it was trained as a run, else from the scheme's summary line
    (networks trained together, such as DML peers, have final numbers only)."""
    row = (res.get("stages") or {}).get(stage) or {}
    last = row.get("test_acc", row.get("combined_acc"))
    best, val = row.get("best_test_acc"), None
    if last is None:  # e.g. a specialist: accuracy on its own remapped classes, not comparable
        return None, None, None
    own = _read(cell_dir / str(row["dir"]) / "results.json") if row.get("dir") else None
    if own and isinstance(own.get("best"), dict) and (own["best"].get("test") or {}).get("acc") is not None:
        last, best, val = _run_values(own)
    return last, best, val


def _run_values(res: dict[str, Any]) -> tuple[float | None, float | None, float | None]:
    best = res.get("best") or {}
    return ((res.get("final") or {}).get("test") or {}).get("acc"), (best.get("test") or {}).get("acc"), \
        (best.get("val") or {}).get("acc")


def _provenance(cells: list[dict[str, Any]]) -> dict[str, Any]:
    def uniq(key):
        return sorted({str(c.get(key)) for c in cells})

    return {"commands": uniq("command"), "commits": uniq("commit"), "hardware": uniq("hardware"),
            "epochs": sorted({c.get("epochs") for c in cells if c.get("epochs") is not None}),
            "wall_s": round(sum(c.get("wall_s") or 0.0 for c in cells), 2)}


def _stat_row(label: str, role: str, spec: CellSpec, per_seed: dict[int, tuple], prov: list[dict],
              n_test: int | None, baseline: dict[str, dict[int, float]] | None) -> dict[str, Any]:
    last = {s: v[0] for s, v in per_seed.items() if v[0] is not None}
    best = {s: v[1] for s, v in per_seed.items() if v[1] is not None}
    val = {s: v[2] for s, v in per_seed.items() if v[2] is not None}
    row: dict[str, Any] = {
        "label": label, "role": role, "group": spec.group, "note": spec.note,
        "seeds": sorted(per_seed), "n": len(per_seed),
        "last_acc": summarize(list(last.values())), "best_acc": summarize(list(best.values())),
        "best_val_acc": summarize(list(val.values())),
        "last_acc_by_seed": last, "best_acc_by_seed": best,
        "diff_last": None, "diff_best": None, **_provenance(prov),
    }
    if n_test:
        row["last_errors"] = summarize([(1 - a) * n_test for a in last.values()])
        row["best_errors"] = summarize([(1 - a) * n_test for a in best.values()])
    if baseline is not None and role != "student" and role != "teacher":
        row["diff_last"] = paired_difference(last, baseline["last"]) if last else None
        row["diff_best"] = paired_difference(best, baseline["best"]) if best else None
    return row


def build_table(study: Study, study_dir: Path, seeds: list[int], not_run: list[str]) -> dict[str, Any]:
    """Rows (teacher, student alone, each distilled variant or scheme stage) from the cells on disk.

    The table is *partial* when a planned cell of the whole study (``--only`` or not) has no
    results."""
    finished: dict[str, dict[int, tuple[dict, dict]]] = {}
    missing = []
    for spec, seed in plan(study, seeds):
        d = study_dir / f"{spec.group}-s{seed}"
        res = _read(d / "results.json")
        if res is None:
            missing.append(d.name)
            continue
        finished.setdefault(spec.group, {})[seed] = (res, _read(d / "study_cell.json") or {})
    n_test = next((r["dataset"]["test"] for g in finished.values() for r, _ in g.values()
                   if isinstance(r.get("dataset"), dict) and r["dataset"].get("test")), None)
    base_cells = next((finished.get(c.group, {}) for c in study.cells if c.role == "student"), {})
    baseline = None
    if base_cells:
        vals = {s: _run_values(r) for s, (r, _) in base_cells.items()}
        baseline = {"last": {s: v[0] for s, v in vals.items() if v[0] is not None},
                    "best": {s: v[1] for s, v in vals.items() if v[1] is not None}}
    rows = []
    for spec in study.cells:
        got = finished.get(spec.group)
        if not got:
            continue
        prov = [p for _, p in got.values()]
        if spec.role != "scheme":
            per_seed = {s: _run_values(r) for s, (r, _) in got.items()}
            rows.append(_stat_row(spec.group, spec.role, spec, per_seed, prov, n_test if study.show_errors else None,
                                  baseline))
            continue
        first = next(iter(got.values()))[0]
        stages = spec.stages or list((first.get("stages") or {}).keys())
        for stage in stages:
            per_seed = {s: _stage_values(study_dir / f"{spec.group}-s{s}", r, stage) for s, (r, _) in got.items()}
            if all(v[0] is None for v in per_seed.values()):
                continue
            rows.append(_stat_row(f"{spec.group}: {stage}", "scheme", spec, per_seed, prov,
                                  n_test if study.show_errors else None, baseline))
    return {
        "study": study.name, "title": study.title, "claim": study.claim, "notes": study.notes,
        "partial": bool(missing), "missing_cells": missing, "not_run_this_time": not_run,
        "n_test": n_test, "best_selected_on": "val", "rows": rows,
    }


def _ms(stat: dict | None, scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` (sample std over seeds), or the mean alone for one seed."""
    if not stat or stat.get("mean") is None:
        return "-"
    s = f"{scale * stat['mean']:.{digits}f}"
    if stat.get("std") is not None:
        s += f" ± {scale * stat['std']:.{digits}f}"
    return s


def _diff(stat: dict | None) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    s = f"{100 * stat['mean']:+.2f}"
    if stat.get("ci_low") is not None:
        s += f" [{100 * stat['ci_low']:+.2f}, {100 * stat['ci_high']:+.2f}]"
    return s


def render_markdown(study: Study, res: dict[str, Any]) -> str:
    lines = [f"# {res['title']}", ""]
    if res["partial"]:
        lines += [f"**PARTIAL**: {len(res['missing_cells'])} cell(s) have no results "
                  f"({', '.join(res['missing_cells'])}); their rows are missing or have fewer seeds.", ""]
    inv = res.get("invocation") or {}
    lines += [f"Claim: {res['claim']}", "",
              f"Last invocation: `{inv.get('command', '?')}`  ",
              f"Commit: `{inv.get('commit', '?')}`  ",
              f"Hardware: {inv.get('hardware', '?')}  ",
              f"Seeds: {inv.get('seeds')}; epochs scale: {inv.get('epochs_scale')}; wall time of this "
              f"invocation: {inv.get('wall_s')} s", ""]
    err = study.show_errors and res.get("n_test")
    head = ["row", "seeds", "best test acc %", "last test acc %"]
    if err:
        head += [f"best test errors /{res['n_test']}", f"last test errors /{res['n_test']}"]
    head += ["val acc % (best epoch)", "Δ best vs student (95% CI)", "Δ last vs student (95% CI)", "epochs",
             "wall s"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res["rows"]:
        cols = [r["label"], ",".join(map(str, r["seeds"])), _ms(r["best_acc"]), _ms(r["last_acc"])]
        if err:
            cols += [_ms(r.get("best_errors"), 1, 0), _ms(r.get("last_errors"), 1, 0)]
        cols += [_ms(r["best_val_acc"]), _diff(r["diff_best"]), _diff(r["diff_last"]),
                 ",".join(map(str, r["epochs"])), f"{r['wall_s']:.0f}"]
        lines.append("| " + " | ".join(cols) + " |")
    lines += ["", "Accuracies are mean ± sample std over seeds (one seed: the value alone). Best = test "
              "accuracy at the epoch with the highest validation accuracy (10% of the training set held "
              "out); last = after the final epoch. Δ: paired difference to the student alone over the "
              "seeds both have, mean and 95% Student-t interval, in points. Scheme rows without a best "
              "column report final-epoch numbers only.", ""]
    lines += ["## Rows", ""]
    for r in res["rows"]:
        lines.append(f"- **{r['label']}**: {r['note']}. Commands: {'; '.join(f'`{c}`' for c in r['commands'])}. "
                     f"Commits: {', '.join(r['commits'])}. Hardware: {'; '.join(r['hardware'])}.")
    if res["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


# -- command line --------------------------------------------------------------------------
def parse_scale(text: str) -> float | str:
    if text == TINY:
        return TINY
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--epochs-scale must be a positive number or 'tiny', got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"--epochs-scale must be positive, got {text!r}")
    return v


def parse_seeds(text: str) -> list[int]:
    from kdistill.runs.grid import parse_seeds as parse

    try:
        return parse(text)
    except KdistillError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("study", choices=sorted(STUDIES))
    p.add_argument("--out", required=True, help="folder that receives <study>/")
    p.add_argument("--seeds", type=parse_seeds, default=[0, 1, 2])
    p.add_argument("--epochs-scale", type=parse_scale, default=1.0, help="multiply every epoch count (or 'tiny': 1)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--max-minutes", type=float, default=None, help="start no new cell after this many minutes")
    p.add_argument("--only", type=lambda t: [g for g in t.split(",") if g], default=None,
                   help="run only these groups (comma-separated); the table still lists every finished cell")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key in every cell, e.g. data.subset=2000 (repeatable)")
    p.add_argument("--cache-teachers", action="store_true",
                   help="distilled cells without augmentation that read only logits use a cache of their "
                        "teacher's outputs (built once per teacher cell) instead of a live teacher")
    a = p.parse_args(argv)
    try:
        res = run_study(a.study, a.out, a.seeds, a.epochs_scale, a.device, a.max_minutes, a.overrides,
                        command=" ".join(shlex.quote(x) for x in ["python", "benchmarks/studies/run_study.py",
                                                                  *(sys.argv[1:] if argv is None else argv)]),
                        only=a.only, cache_teachers=a.cache_teachers)
    except KdistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    where = Path(a.out) / a.study
    print(f"{'PARTIAL ' if res['partial'] else ''}table written to {where / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
