"""Aggregation of run folders: seeds to mean, standard deviation and 95% t-intervals.

A compare folder holds one run folder per cell, named ``<group>-s<seed>`` (``kd-s0``,
``scratch-s1``). Everything here is read from those folders alone: ``results.json``,
``metrics.jsonl``, ``config.yaml`` and the teacher's sub-folder. Folders that are missing
files or hold damaged ones are skipped and named, never crashed on.

Statistics follow the usual small-sample recipe (e.g. Dror et al. 2018, "The Hitchhiker's
Guide to Testing Statistical Significance in NLP"; Bouthillier et al. 2021,
arXiv:2103.03098, on reporting seed variance): the sample standard deviation (``ddof=1``)
and a two-sided 95% Student-t interval ``mean +- t_{0.975, n-1} * std / sqrt(n)``. The
improvement of a method over the scratch student is a *paired* difference over the seeds
both were run with: the same seed gives the same initialisation and data order, so pairing
removes that shared noise.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import parse_yaml
from ..errors import ConfigError, DataError
from ..runs.grid import SCRATCH
from ..safe_read import ResultsRecord, read_json
from ..task import DEFAULT_TASK, TASKS, Headline

TEACHER = "teacher"
_CELL = re.compile(r"^(?P<group>.+)-s(?P<seed>-?\d+)$")


# -- Student t quantiles without scipy -----------------------------------------------------
def t_two_sided_mass(t: float, df: int) -> float:
    """``P(|T| < t)`` for Student's t with integer ``df`` degrees of freedom.

    The closed forms of Abramowitz & Stegun (1964), eq. 26.7.3 (odd ``df``) and 26.7.4
    (even ``df``), with ``theta = atan(t / sqrt(df))``.
    """
    if df < 1:
        raise ValueError("df must be >= 1")
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 1:
        series, term = 0.0, 1.0
        if df > 1:
            series = 1.0
            for k in range(1, (df - 3) // 2 + 1):
                term *= (2 * k) / (2 * k + 1) * c2
                series += term
        return 2.0 / math.pi * (theta + math.sin(theta) * math.cos(theta) * series)
    series, term = 1.0, 1.0
    for k in range(1, (df - 2) // 2 + 1):
        term *= (2 * k - 1) / (2 * k) * c2
        series += term
    return math.sin(theta) * series


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (``p > 0.5``) of Student's t with ``df`` degrees of freedom.

    Inverts :func:`t_two_sided_mass` by bisection: ``t_{0.975, 2} = 4.303``,
    ``t_{0.975, 4} = 2.776`` as in every printed table.
    """
    if not 0.5 < p < 1:
        raise ValueError("p must lie in (0.5, 1)")
    target = 2 * p - 1
    lo, hi = 0.0, 1.0
    while t_two_sided_mass(hi, df) < target:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_two_sided_mass(mid, df) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


def summarize(values: list[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean, sample std (``ddof=1``) and the two-sided t-interval of ``values``.

    With one value the std and interval are undefined (``None``): one seed says nothing
    about the spread, and the tables show that rather than a fake zero.
    """
    vals = [float(v) for v in values if _is_number(v)]
    n = len(vals)
    out: dict[str, Any] = {
        "n": n,
        "mean": None,
        "std": None,
        "half_width": None,
        "ci_low": None,
        "ci_high": None,
        "values": vals,
    }
    if n == 0:
        return out
    mean = sum(vals) / n
    out["mean"] = mean
    if n >= 2:
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
        half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
        out.update(std=std, half_width=half, ci_low=mean - half, ci_high=mean + half)
    return out


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict[str, Any]:
    """Summary of ``a[s] - b[s]`` over the seeds ``s`` both have."""
    seeds = sorted(set(a) & set(b))
    out = summarize([a[s] - b[s] for s in seeds])
    out["seeds"] = seeds
    return out


# -- reading run folders -------------------------------------------------------------------
class RunFolderError(Exception):
    """A run folder that cannot be used (missing or damaged files)."""


@dataclass
class RunRecord:
    """One finished run folder, as read from disk."""

    path: Path
    results: dict[str, Any]
    metrics: list[dict[str, Any]]
    config: dict[str, Any]
    group: str
    seed: int
    notes: list[str] = field(default_factory=list)
    #: the metric of the run's task that compare and report show (test accuracy for images)
    headline: Headline = field(default_factory=Headline)
    task: str = DEFAULT_TASK

    @property
    def name(self) -> str:
        return self.path.name

    def score(self, which: str = "final") -> Any:
        """The headline metric at the last epoch (``final``) or the best one (``best``)."""
        if which == "best" and not self.headline.selects_best:
            return best_of(self.metrics, self.headline)
        return _get(self.results, which, self.headline.split, self.headline.key)

    def test(self, which: str = "final") -> dict[str, Any]:
        return (self.results.get(which) or {}).get("test") or {}

    @property
    def teacher(self) -> dict[str, Any]:
        return self.results.get("teacher") or {}

    def teacher_dir(self) -> Path | None:
        """The folder of the teacher's own run (metrics.jsonl, results.json), if any."""
        own = self.path / "teacher"
        if (own / "results.json").is_file():
            return own
        ckpt = self.teacher.get("checkpoint")
        if ckpt:
            p = Path(ckpt).parent
            if (p / "results.json").is_file():
                return p
            # the compare folder was moved: look for the sibling cell by name
            sib = self.path.parent / p.parent.name / p.name
            if (sib / "results.json").is_file():
                return sib
        return None

    def teacher_key(self) -> str:
        """Identifies the teacher: runs sharing a teacher checkpoint share one key."""
        ckpt = self.teacher.get("checkpoint")
        if ckpt:
            p = Path(ckpt)
            # trained in a cell: <compare>/<cell>/teacher/model.safetensors
            return f"{p.parent.parent.name}/{p.parent.name}/{p.name}" if p.parent.name == "teacher" else str(p)
        return f"{self.name}/teacher"

    def teacher_latency_busy(self) -> bool:
        """Whether the teacher's latency was measured on a busy machine."""
        lat = self.teacher.get("latency_ms_cpu_b1") or {}
        if "p50" not in lat and (self.path / "teacher_latency.json").is_file():
            try:
                lat = json.loads((self.path / "teacher_latency.json").read_text())
            except (ValueError, OSError):
                return False
        return bool(isinstance(lat, dict) and lat.get("busy"))

    def teacher_latency(self) -> float | None:
        lat = self.teacher.get("latency_ms_cpu_b1") or {}
        if "p50" in lat:
            return float(lat["p50"])
        f = self.path / "teacher_latency.json"
        if f.is_file():
            try:
                return float(json.loads(f.read_text())["p50"])
            except (ValueError, KeyError, TypeError, OSError, RecursionError):
                return None
        return None


def best_of(rows: list[dict[str, Any]], hl: Headline) -> float | None:
    """The best per-epoch value of the headline (``<split>_<key>`` in metrics.jsonl rows)."""
    vals = [r[hl.column] for r in rows if _is_number(r.get(hl.column))]
    if not vals:
        return None
    return max(vals) if hl.higher_is_better else min(vals)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Rows of a ``metrics.jsonl`` and how many lines were unreadable (cut by a kill)."""
    if not path.is_file():
        return [], 0
    rows, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            bad += 1
            continue
        if isinstance(row, dict) and "epoch" in row:
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def load_run(path: str | Path) -> RunRecord:
    """Read one finished run folder; :class:`RunFolderError` says what is wrong with it."""
    path = Path(path)
    res_file = path / "results.json"
    if not res_file.is_file():
        raise RunFolderError("no results.json (unfinished or not a run folder)")
    try:
        results = read_json(res_file, ResultsRecord)
    except DataError as e:  # not JSON, nested too deeply, not an object, a section that is no object
        detail = str(e).removeprefix(str(res_file)).strip(" :.")
        raise RunFolderError(f"results.json is damaged ({detail})") from None
    task = results.get("task", DEFAULT_TASK)
    if not isinstance(task, str) or task not in TASKS:
        raise RunFolderError(f"results.json names task {task!r}, which is not registered here")
    hl = TASKS.get(task).headline
    where = f"final.{hl.split}.{hl.key}"
    missing = [k for k in ("dataset", "final", "student") if not isinstance(results.get(k), dict)]
    if missing or hl.key not in (results["final"].get(hl.split) or {}):
        raise RunFolderError(f"results.json lacks {', '.join(missing) or where}")
    if not _is_number(results["final"][hl.split][hl.key]):
        raise RunFolderError(f"results.json: {where} is not a number")
    metrics, bad = read_metrics(path / "metrics.jsonl")
    notes = [f"{bad} damaged line(s) in metrics.jsonl skipped"] if bad else []
    if not (path / "metrics.jsonl").is_file():
        notes.append("no metrics.jsonl (no learning curve)")
    config: dict[str, Any] = {}
    try:  # within the config limits: a run folder's config.yaml may be anyone's
        config = parse_yaml((path / "config.yaml").read_text(), "config.yaml") or {}
    except (OSError, UnicodeDecodeError, ConfigError):
        notes.append("config.yaml missing or damaged")
    m = _CELL.match(path.name)
    seed = results.get("seed", int(m.group("seed")) if m else 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise RunFolderError(f"results.json: seed {seed!r} is not an integer")
    if m and int(m.group("seed")) == seed:
        group = m.group("group")
    else:
        group = path.name
    return RunRecord(path, results, metrics, config if isinstance(config, dict) else {}, group, seed, notes, hl, task)


def find_run_dirs(root: str | Path) -> list[Path]:
    """Sub-folders of a compare folder that look like run folders: in the grid's order when
    ``compare.json`` records it (so tables list methods as the user named them), else by name."""
    root = Path(root)
    found = sorted(
        p
        for p in root.iterdir()
        if p.is_dir()
        and not p.name.startswith((".", "plots"))
        and any((p / f).exists() for f in ("results.json", "config.yaml", "metrics.jsonl"))
    )
    order: dict[str, int] = {}
    try:
        cells = json.loads((root / "compare.json").read_text())["plan"]["cells"]
        order = {c["name"]: i for i, c in enumerate(cells)}
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        pass
    return sorted(found, key=lambda p: order.get(p.name, len(order)))


def collect_runs(paths: list[Path]) -> tuple[list[RunRecord], list[dict[str, str]]]:
    """Load every folder; the unusable ones come back as ``{"run", "reason"}``."""
    records, skipped = [], []
    for p in paths:
        try:
            records.append(load_run(p))
        except RunFolderError as e:
            skipped.append({"run": Path(p).name, "reason": str(e)})
    return records, skipped


def check_compatible(records: list[RunRecord]) -> dict[str, Any]:
    """The dataset all runs share; a :class:`ConfigError` if they differ.

    Runs must agree on dataset name, class count and test-set size. The training-set
    fingerprint must agree between runs of the same seed (a seed-dependent subset or
    validation split changes it between seeds, legitimately).
    """
    if not records:
        raise ConfigError("No finished run folder to aggregate.")
    first = records[0]
    ref = first.results["dataset"]
    for r in records[1:]:
        if r.task != first.task:
            raise ConfigError(f"Runs {first.name!r} and {r.name!r} are runs of different tasks ({first.task} vs "
                              f"{r.task}); compare them separately.")
        d = r.results["dataset"]
        for key in ("name", "num_classes", first.headline.split):
            if d.get(key) != ref.get(key):
                raise ConfigError(
                    f"Runs {first.name!r} and {r.name!r} used different data ({key} {ref.get(key)!r} vs "
                    f"{d.get(key)!r}); a comparison only makes sense on one dataset. Compare them separately."
                )
    by_seed: dict[int, RunRecord] = {}
    for r in records:
        other = by_seed.setdefault(r.seed, r)
        fa, fb = other.results["dataset"].get("fingerprint"), r.results["dataset"].get("fingerprint")
        if fa and fb and fa != fb:
            raise ConfigError(
                f"Runs {other.name!r} and {r.name!r} have the same seed {r.seed} but different training data "
                f"(fingerprints {fa} vs {fb}); they cannot be paired. Compare them separately."
            )
    return {k: ref.get(k) for k in ("name", "num_classes", "train", "test", "val")} | {"task": first.task}


# -- aggregation ---------------------------------------------------------------------------
def _get(d: dict, *keys, default=None):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return default
        d = d[k]
    return d


def group_order(records: list[RunRecord]) -> list[str]:
    """Groups in order of first appearance, scratch first."""
    seen: list[str] = []
    for r in records:
        if r.group not in seen:
            seen.append(r.group)
    return sorted(seen, key=lambda g: g != SCRATCH)


def _teacher_row(records: list[RunRecord]) -> dict[str, Any] | None:
    teachers: dict[str, list[RunRecord]] = {}
    hl = records[0].headline
    for r in records:
        if _get(r.teacher, "metrics", hl.split, hl.key) is not None:
            teachers.setdefault(r.teacher_key(), []).append(r)
    if not teachers:
        return None
    last, best, ece, lat, seeds, names = [], [], [], [], [], []
    for rs in teachers.values():
        r = rs[0]
        m = r.teacher["metrics"][hl.split]
        last.append(m[hl.key])
        ece.append(m.get("ece"))
        seeds.append(r.seed)
        tdir = next((d for d in (x.teacher_dir() for x in rs) if d is not None), None)
        names.append(tdir.parent.name if tdir is not None else r.name)
        b = None
        if tdir is not None and not hl.selects_best:
            b = best_of(read_metrics(tdir / "metrics.jsonl")[0], hl)
        elif tdir is not None:
            try:
                b = _get(json.loads((tdir / "results.json").read_text()), "best", hl.split, hl.key)
            except (ValueError, OSError, RecursionError):
                b = None
        best.append(m[hl.key] if b is None else b)
        lat.append(next((v for v in (x.teacher_latency() for x in rs) if v is not None), None))
    any_r = next(iter(teachers.values()))[0]
    lat_ok = [v for v in lat if v is not None]
    return {
        "label": TEACHER,
        "role": TEACHER,
        "model": any_r.teacher.get("model", "ensemble"),
        "n": len(teachers),
        "seeds": sorted(set(seeds)),
        "runs": names,
        "best_acc": summarize(best),
        "last_acc": summarize(last),
        "diff_last": None,
        "diff_best": None,
        "agreement": None,
        "ece": summarize(ece),
        "params": any_r.teacher.get("params"),
        "bytes": any_r.teacher.get("bytes"),
        "latency_ms_p50": sum(lat_ok) / len(lat_ok) if lat_ok else None,
        "latency_busy": any(x.teacher_latency_busy() for rs in teachers.values() for x in rs),
    }


def aggregate(records: list[RunRecord], skipped: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """One row per group (teacher, scratch, each method) with statistics over seeds."""
    dataset = check_compatible(records)
    groups = group_order(records)
    by_group = {g: sorted((r for r in records if r.group == g), key=lambda r: r.seed) for g in groups}
    scratch = by_group.get(SCRATCH, [])
    hl = records[0].headline
    scratch_last = {r.seed: r.score("final") for r in scratch}
    scratch_best = {r.seed: r.score("best") for r in scratch if r.score("best") is not None}
    rows = []
    t = _teacher_row(records)
    if t is not None:
        rows.append(t)
    for g in groups:
        rs = by_group[g]
        dup = {r.seed for r in rs if sum(x.seed == r.seed for x in rs) > 1}
        if dup:
            raise ConfigError(f"Group {g!r} has several runs with seed(s) {sorted(dup)}; rename one of them.")
        last = {r.seed: r.score("final") for r in rs}
        best = {r.seed: r.score("best") for r in rs if r.score("best") is not None}
        lat = [_get(r.results, "student", "latency_ms_cpu_b1", "p50") for r in rs]
        lat = [v for v in lat if v is not None]
        is_scratch = g == SCRATCH
        rows.append(
            {
                "label": g,
                "role": SCRATCH if is_scratch else "method",
                "model": rs[0].results["student"].get("model"),
                "method": rs[0].results.get("method"),
                "n": len(rs),
                "seeds": [r.seed for r in rs],
                "runs": [r.name for r in rs],
                "best_acc": summarize(list(best.values())),
                "last_acc": summarize(list(last.values())),
                "diff_last": None if is_scratch or not scratch else paired_difference(last, scratch_last),
                "diff_best": None if is_scratch or not scratch_best else paired_difference(best, scratch_best),
                "agreement": summarize([_get(r.results, "final", hl.split, "agreement") for r in rs]),
                "ece": summarize([_get(r.results, "final", hl.split, "ece") for r in rs]),
                "params": rs[0].results["student"].get("params"),
                "bytes": rs[0].results["student"].get("bytes"),
                "latency_ms_p50": sum(lat) / len(lat) if lat else None,
                # measured while the machine was busy (spread between rounds): shown marked
                "latency_busy": any(_get(r.results, "student", "latency_ms_cpu_b1", "busy") for r in rs),
                "overrides": _config_values(rs[0]),
            }
        )
    selected = {r.results.get("best", {}).get("selected_on") for r in records} - {None}
    notes = [f"{r.name}: {n}" for r in records for n in r.notes]
    return {
        "dataset": dataset,
        #: the compared metric (rows' best_acc/last_acc hold it: accuracy for images)
        "headline": asdict(hl),
        "rows": rows,
        "best_selected_on": sorted(selected),
        "skipped": skipped or [],
        "notes": notes,
        "confidence": 0.95,
    }


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists kept as values)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _config_values(r: RunRecord) -> dict[str, Any]:
    flat = flatten(r.config)
    return {k: v for k, v in flat.items() if k.startswith("method.") and not isinstance(v, (dict, list))}


def aggregate_dir(root: str | Path) -> dict[str, Any]:
    """Aggregate every run folder under a compare folder."""
    records, skipped = collect_runs(find_run_dirs(root))
    return aggregate(records, skipped)


# -- formatting ----------------------------------------------------------------------------
def pct(stat: dict | None, diff: bool = False) -> str:
    """``"81.25 +- 1.10"`` (percent, 95% half-width) or ``"81.25"`` for one seed."""
    if not stat or stat.get("mean") is None:
        return "-"
    sign = "+" if diff else ""
    s = f"{100 * stat['mean']:{sign}.2f}"
    if stat.get("half_width") is not None:
        s += f" ± {100 * stat['half_width']:.2f}"
    return s


def fmt_std(stat: dict | None, scale: float = 100.0) -> str:
    if not stat or stat.get("std") is None:
        return "-"
    return f"{scale * stat['std']:.2f}" if scale == 100.0 else f"{stat['std']:.3f}"


def plain(stat: dict | None, diff: bool = False) -> str:
    """``"67.192 ± 1.104"`` (a plain number, 95% half-width) or ``"67.192"`` for one seed."""
    if not stat or stat.get("mean") is None:
        return "-"
    s = f"{stat['mean']:{'+' if diff else ''}.3f}"
    if stat.get("half_width") is not None:
        s += f" ± {stat['half_width']:.3f}"
    return s


def _headline(agg: dict[str, Any]) -> Headline:
    return Headline(**agg["headline"]) if agg.get("headline") else Headline()


def columns(agg: dict[str, Any]) -> list[str]:
    """The table's columns: :data:`COLUMNS` for a percent metric (accuracy), else the
    metric's own label (``best ppl``...)."""
    hl = _headline(agg)
    if hl.percent:
        return COLUMNS
    return ["model", "n", f"best {hl.label}", f"last {hl.label}", "std", "Δ vs scratch", "agreement %", "ECE %",
            "params", "latency ms"]


def fmt_num(v: Any, spec: str = ",") -> str:
    if v is None:
        return "-"
    return format(v, spec)


COLUMNS = [
    "model",
    "n",
    "best acc %",
    "last acc %",
    "std %",
    "Δ vs scratch %",
    "agreement %",
    "ECE %",
    "params",
    "latency ms",
]


def table_rows(agg: dict[str, Any]) -> list[list[str]]:
    """The comparison table as strings, one list per row (columns: :data:`COLUMNS`)."""
    out = []
    hl = _headline(agg)
    num = pct if hl.percent else plain
    for row in agg["rows"]:
        label = row["label"] if row["role"] != SCRATCH else "scratch (CE)"
        out.append(
            [
                f"{label} [{row.get('model')}]",
                str(row["n"]),
                num(row["best_acc"]),
                num(row["last_acc"]),
                fmt_std(row["last_acc"], 100.0 if hl.percent else 1.0),
                num(row["diff_last"], diff=True),
                pct(row["agreement"]),
                pct(row["ece"]),
                fmt_num(row["params"]),
                fmt_num(row["latency_ms_p50"], ".3f") + (" (busy)" if row.get("latency_busy") else ""),
            ]
        )
    return out


def markdown_table(agg: dict[str, Any]) -> str:
    cols = columns(agg)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in table_rows(agg)]
    return "\n".join(lines)


def table_legend(agg: dict[str, Any]) -> str:
    """What the columns mean, including how 'best' was selected."""
    sel = agg.get("best_selected_on") or []
    warn = " Best epoch was selected on the **test** set (no validation split): optimistic." if "test" in sel else ""
    hl = _headline(agg)
    if not hl.percent:
        better = "higher" if hl.higher_is_better else "lower"
        return (
            f"{hl.label} is the {hl.words} ({better} is better): mean ± half-width of the 95% Student-t interval "
            f"over seeds (std is the sample std, ddof=1, of the last-epoch value; best is each run's best epoch). "
            f"Δ vs scratch is the paired "
            f"difference of the last-epoch {hl.label} to the scratch student (cross-entropy alone) over the same "
            "seeds. Agreement is top-1 agreement with the teacher (per token for a language model)."
        )
    return (
        "Accuracies are test-set top-1 in percent: mean ± half-width of the 95% Student-t interval over "
        "seeds (std is the sample std, ddof=1, of the last-epoch accuracy). Δ vs scratch is the paired "
        "difference of last-epoch accuracy to the scratch student over the same seeds. Agreement is top-1 "
        "agreement with the teacher; ECE uses 15 bins; latency is the median CPU forward time at batch "
        f"size 1.{warn}"
    )


def rich_table(agg: dict[str, Any], title: str = "comparison"):
    from rich.table import Table

    table = Table(title=title)
    for c in columns(agg):
        table.add_column(c, justify="left" if c == "model" else "right")
    for r in table_rows(agg):
        table.add_row(*r)
    return table
