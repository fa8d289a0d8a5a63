"""Report area: seed statistics, aggregation of run folders, plots, the HTML report, and the
compare grid runner end to end on the synthetic dataset."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
import yaml

from kdistill.errors import ConfigError
from kdistill.report import plots
from kdistill.report.tables import (
    aggregate_dir,
    collect_runs,
    find_run_dirs,
    paired_difference,
    summarize,
    t_quantile,
    t_two_sided_mass,
)

T_975_2 = 4.303  # printed t tables, two-sided 95%
T_975_4 = 2.776


# -- t quantiles and summaries -------------------------------------------------------------
def test_t_quantile_matches_printed_tables():
    for df, want in [
        (1, 12.706),
        (2, T_975_2),
        (3, 3.182),
        (4, T_975_4),
        (9, 2.262),
        (30, 2.042),
        (120, 1.980),
    ]:
        assert t_quantile(0.975, df) == pytest.approx(want, abs=6e-4), df
    assert t_quantile(0.995, 5) == pytest.approx(4.032, abs=6e-4)
    assert t_quantile(0.975, 5000) == pytest.approx(1.95996, abs=1e-3)  # near the normal limit


def test_t_mass_closed_forms():
    assert t_two_sided_mass(1.0, 1) == pytest.approx(0.5)  # Cauchy: P(|T| < 1) = 1/2
    for t in (0.3, 1.7, 5.0):
        assert t_two_sided_mass(t, 2) == pytest.approx(t / math.sqrt(t * t + 2))


def test_t_quantile_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 61):
        assert t_quantile(0.975, df) == pytest.approx(stats.t.ppf(0.975, df), rel=1e-7)


def test_summarize_by_hand():
    s = summarize([0.80, 0.84, 0.82])
    assert s["mean"] == pytest.approx(0.82)
    assert s["std"] == pytest.approx(0.02)  # ddof=1: sqrt((0.02^2 + 0.02^2 + 0) / 2)
    assert s["half_width"] == pytest.approx(T_975_2 * 0.02 / math.sqrt(3), abs=1e-5)
    assert s["ci_low"] == pytest.approx(0.82 - s["half_width"])
    five = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert five["half_width"] == pytest.approx(T_975_4 * math.sqrt(2.5) / math.sqrt(5), abs=1e-3)
    one = summarize([0.5])
    assert one["mean"] == 0.5 and one["std"] is None and one["half_width"] is None


def test_paired_difference_by_hand():
    d = paired_difference({0: 0.90, 1: 0.80, 2: 0.85, 3: 0.70}, {0: 0.85, 1: 0.78, 2: 0.80})
    assert d["seeds"] == [0, 1, 2]  # seed 3 has no partner
    assert d["mean"] == pytest.approx(0.04)
    assert d["std"] == pytest.approx(math.sqrt(0.0003))
    assert d["half_width"] == pytest.approx(T_975_2 * math.sqrt(0.0003) / math.sqrt(3), abs=2e-5)


def test_pairing_removes_shared_seed_noise():
    base = {s: 0.6 + 0.1 * s for s in range(4)}  # large seed-to-seed spread
    better = {s: v + 0.02 + 0.001 * (-1) ** s for s, v in base.items()}
    paired = paired_difference(better, base)
    unpaired = summarize(list(better.values()))
    assert paired["half_width"] < unpaired["half_width"] / 50
    assert paired["ci_low"] > 0


# -- fixture run folders -------------------------------------------------------------------
def write_run(
    root: Path,
    name: str,
    seed: int,
    last: float,
    best: float,
    *,
    agreement=0.9,
    ece=0.05,
    teacher_acc=0.9,
    teacher_ckpt=None,
    dataset=None,
    params=1000,
    latency=0.1,
    epochs=3,
    method=("0.9*kd", "0.1*ce"),
) -> Path:
    d = root / name
    d.mkdir(parents=True)
    ds = {
        "name": "synthetic",
        "train": 256,
        "test": 128,
        "val": 0,
        "transfer": 0,
        "num_classes": 4,
        "fingerprint": f"fp{seed}",
    } | (dataset or {})
    test_last = {"acc": last, "nll": 0.5, "ece": ece, "agreement": agreement, "kl_to_teacher": 0.1}
    results = {
        "name": name,
        "dataset": ds,
        "method": list(method),
        "student": {
            "model": "mlp",
            "params": params,
            "bytes": 4 * params,
            "latency_ms_cpu_b1": {"p50": latency, "p95": latency},
        },
        "teacher": {
            "model": "mlp",
            "params": 10 * params,
            "bytes": 40 * params,
            "checkpoint": teacher_ckpt or f"/somewhere/scratch-s{seed}/teacher/model.safetensors",
            "metrics": {"test": {"acc": teacher_acc, "nll": 0.3, "ece": 0.02}},
        },
        "final": {"test": test_last},
        "best": {"epoch": 1, "selected_on": "test", "test": dict(test_last, acc=best)},
        "seed": seed,
        "train_time_s": 1.0,
    }
    (d / "results.json").write_text(json.dumps(results))
    rows = [
        {
            "epoch": e,
            "step": 4 * (e + 1),
            "lr": 0.001,
            "train_loss": 1.0 / (e + 1),
            "epoch_time_s": 0.1,
            "test_acc": last - 0.1 * (epochs - 1 - e),
            "test_nll": 0.5,
        }
        for e in range(epochs)
    ]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    method_cfg = {"name": "ce"} if name.startswith("scratch") else {"name": "kd", "temperature": 4.0, "alpha": 0.9}
    cfg = {
        "data": {"name": "synthetic"},
        "student": {"model": "mlp"},
        "method": method_cfg,
        "train": {"seed": seed},
    }
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    return d


SCRATCH_LAST, SCRATCH_BEST = [0.70, 0.74, 0.72], [0.72, 0.75, 0.73]
KD_LAST, KD_BEST = [0.75, 0.78, 0.75], [0.76, 0.79, 0.77]
TEACHER = [0.90, 0.92, 0.94]


@pytest.fixture
def compare_dir(tmp_path) -> Path:
    root = tmp_path / "cmp"
    for s in range(3):
        write_run(
            root,
            f"scratch-s{s}",
            s,
            SCRATCH_LAST[s],
            SCRATCH_BEST[s],
            teacher_acc=TEACHER[s],
            agreement=0.80 + 0.01 * s,
            method=("1*ce",),
        )
        write_run(
            root,
            f"kd-s{s}",
            s,
            KD_LAST[s],
            KD_BEST[s],
            teacher_acc=TEACHER[s],
            agreement=0.85 + 0.02 * s,
            ece=0.03 + 0.01 * s,
        )
    return root


def _row(agg, label):
    return next(r for r in agg["rows"] if r["label"] == label)


def test_aggregate_fixture_by_hand(compare_dir):
    agg = aggregate_dir(compare_dir)
    assert [r["label"] for r in agg["rows"]] == ["teacher", "scratch", "kd"]
    t = _row(agg, "teacher")
    assert t["n"] == 3  # one teacher per seed
    assert t["last_acc"]["mean"] == pytest.approx(0.92)
    assert t["last_acc"]["half_width"] == pytest.approx(T_975_2 * 0.02 / math.sqrt(3), abs=1e-5)
    kd = _row(agg, "kd")
    assert kd["seeds"] == [0, 1, 2]
    assert kd["last_acc"]["mean"] == pytest.approx(0.76)
    assert kd["last_acc"]["std"] == pytest.approx(math.sqrt(0.0003))
    assert kd["best_acc"]["mean"] == pytest.approx((0.76 + 0.79 + 0.77) / 3)
    assert kd["diff_last"]["mean"] == pytest.approx(0.04)  # diffs 0.05, 0.04, 0.03
    assert kd["diff_last"]["std"] == pytest.approx(0.01)
    assert kd["diff_last"]["half_width"] == pytest.approx(T_975_2 * 0.01 / math.sqrt(3), abs=1e-5)
    assert kd["diff_best"]["mean"] == pytest.approx(0.04)  # 0.04, 0.04, 0.04
    assert kd["diff_best"]["std"] == pytest.approx(0.0, abs=1e-12)
    assert kd["agreement"]["mean"] == pytest.approx(0.87)
    assert kd["ece"]["mean"] == pytest.approx(0.04)
    assert kd["params"] == 1000 and kd["latency_ms_p50"] == pytest.approx(0.1)
    sc = _row(agg, "scratch")
    assert sc["diff_last"] is None and sc["last_acc"]["mean"] == pytest.approx(0.72)
    assert agg["best_selected_on"] == ["test"]


def test_shared_teacher_counts_once(tmp_path):
    ck = "/x/scratch-s0/teacher/model.safetensors"
    for s in range(2):
        write_run(tmp_path, f"scratch-s{s}", s, 0.7, 0.7, teacher_ckpt=ck, teacher_acc=0.9)
        write_run(tmp_path, f"kd-s{s}", s, 0.8, 0.8, teacher_ckpt=ck, teacher_acc=0.9)
    t = _row(aggregate_dir(tmp_path), "teacher")
    assert t["n"] == 1 and t["last_acc"]["std"] is None


def test_markdown_table_shows_interval(compare_dir):
    from kdistill.report.tables import markdown_table

    md = markdown_table(aggregate_dir(compare_dir))
    kd_line = next(line for line in md.splitlines() if line.startswith("| kd"))
    half = 100 * T_975_2 * math.sqrt(0.0003) / math.sqrt(3)
    assert f"76.00 ± {half:.2f}" in kd_line
    assert "+4.00 ± 2.48" in kd_line


@pytest.mark.parametrize("change", [{"num_classes": 10}, {"name": "mnist1d"}, {"test": 64}])
def test_refuses_to_mix_datasets(compare_dir, change):
    write_run(compare_dir, "other-s0", 0, 0.5, 0.5, dataset=change)
    with pytest.raises(ConfigError, match="other-s0"):
        aggregate_dir(compare_dir)


def test_refuses_same_seed_different_training_data(compare_dir):
    write_run(compare_dir, "other-s1", 1, 0.5, 0.5, dataset={"fingerprint": "not-the-same"})
    with pytest.raises(ConfigError, match="cannot be paired"):
        aggregate_dir(compare_dir)


def test_damaged_run_folders_are_named_and_skipped(compare_dir):
    from kdistill.report.html import build_report

    full = (compare_dir / "kd-s0" / "results.json").read_text()
    write_run(compare_dir, "at-s0", 0, 0.7, 0.7)
    (compare_dir / "at-s0" / "results.json").write_text(full[: len(full) // 2])  # cut by a kill
    write_run(compare_dir, "rkd-s0", 0, 0.7, 0.7)
    (compare_dir / "rkd-s0" / "results.json").unlink()  # never finished
    wrong = json.loads(full) | {"name": "ft-s0"}
    wrong["final"]["test"]["acc"] = "n/a"  # valid JSON, wrong content
    write_run(compare_dir, "ft-s0", 0, 0.7, 0.7)
    (compare_dir / "ft-s0" / "results.json").write_text(json.dumps(wrong))
    metrics = compare_dir / "kd-s1" / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"epoch": 3, "te')  # a truncated last line
    records, skipped = collect_runs(find_run_dirs(compare_dir))
    reasons = {s["run"]: s["reason"] for s in skipped}
    assert set(reasons) == {"at-s0", "rkd-s0", "ft-s0"}
    assert "not a number" in reasons["ft-s0"]
    assert "damaged" in reasons["at-s0"] and "no results.json" in reasons["rkd-s0"]
    kd1 = next(r for r in records if r.name == "kd-s1")
    assert len(kd1.metrics) == 3 and kd1.notes
    logged = []
    res = build_report(compare_dir, log=logged.append, calibration=False)
    md = Path(res["markdown"]).read_text()
    assert "at-s0: results.json is damaged" in md and "rkd-s0: no results.json" in md
    assert any("at-s0" in line for line in logged)
    assert _row(res["aggregate"], "kd")["last_acc"]["mean"] == pytest.approx(0.76)


# -- plots ---------------------------------------------------------------------------------
def assert_real_png(path: Path, min_bytes: int = 8000) -> None:
    from matplotlib.image import imread

    assert path.is_file() and path.stat().st_size > min_bytes, path
    img = imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    assert float(img[..., :3].var()) > 1e-3, f"{path} is a single colour"
    assert len({tuple(p) for p in img[::7, ::7, :3].reshape(-1, 3).tolist()}) > 10


def test_reliability_bins_reproduce_metrics_ece():
    from kdistill.metrics import ece

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 5, generator=g) * 3
    labels = torch.randint(0, 5, (500,), generator=g)
    rel = plots.reliability_bins(logits, labels)
    assert rel.ece == pytest.approx(ece(logits, labels), abs=1e-6)
    assert sum(rel.count) == 500


def test_pareto_front_by_hand():
    # (cost, accuracy): C is dominated by B (cheaper and more accurate)
    pts = [(10.0, 0.9), (1.0, 0.7), (5.0, 0.6), (2.0, 0.8), (2.0, 0.75)]
    assert plots.pareto_front(pts) == [1, 3, 0]


def test_every_plot_is_a_real_image(tmp_path):
    g = torch.Generator().manual_seed(1)
    rows = [
        [
            {
                "epoch": e,
                "train_loss": 2 / (e + 1) + 0.1 * s,
                "test_acc": 0.5 + 0.1 * e,
                "test_nll": 1.0 / (e + 1),
            }
            for e in range(4)
        ]
        for s in range(2)
    ]
    plots.learning_curves([plots.Curve("teacher", rows, "teacher"), plots.Curve("kd", rows)], tmp_path / "lc.png")
    pts = [
        {"label": "teacher", "x": 10000, "y": 0.9, "yerr": 0.01, "role": "teacher"},
        {"label": "scratch", "x": 1000, "y": 0.7, "yerr": 0.02, "role": "scratch"},
        {"label": "kd", "x": 1000, "y": 0.75, "yerr": None, "role": "method"},
    ]
    plots.accuracy_vs_cost(pts, "parameters (count)", tmp_path / "pareto.png")
    plots.heatmap([[70.0, 71.5], [72.0, None]], [1, 4], [0.5, 0.9], "temperature T", "alpha", tmp_path / "hm.png")
    logits, labels = torch.randn(300, 4, generator=g) * 2, torch.randint(0, 4, (300,), generator=g)
    rel = [
        plots.reliability_bins(logits, labels, "teacher"),
        plots.reliability_bins(logits * 0.5, labels, "kd"),
    ]
    plots.reliability_diagram(rel, tmp_path / "rel.png")
    plots.per_class_plot(
        [
            ("teacher", plots.per_class_accuracy(logits, labels, 4)),
            ("kd", plots.per_class_accuracy(logits * 0.5, labels, 4)),
        ],
        tmp_path / "pc.png",
    )
    for name in ("lc", "pareto", "hm", "rel", "pc"):
        assert_real_png(tmp_path / f"{name}.png")


class _Imgs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.tables = [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])
        self.tables += tag == "table"


def _check_html(path: Path, n_plots: int) -> None:
    import base64

    p = _Imgs()
    p.feed(path.read_text())
    p.close()
    assert p.tables == 1
    assert len(p.srcs) == n_plots
    for src in p.srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_from_fixture_folders(compare_dir):
    from kdistill.report.html import build_report

    res = build_report(compare_dir, log=lambda s: None, calibration=False)
    names = sorted(Path(p).name for p in res["plots"])
    assert names == ["acc_vs_latency.png", "acc_vs_params.png", "learning_curves.png"]
    for p in res["plots"]:
        assert_real_png(Path(p))
    _check_html(Path(res["html"]), 3)
    md = Path(res["markdown"]).read_text()
    for p in res["plots"]:
        assert f"(plots/{Path(p).name})" in md


def test_sweep_folder_gets_a_heatmap(tmp_path):
    from kdistill.report.html import build_report

    write_run(tmp_path, "scratch-s0", 0, 0.7, 0.7)
    accs = {(1.0, 0.5): 0.71, (4.0, 0.5): 0.74, (1.0, 0.9): 0.72, (4.0, 0.9): 0.78}
    for (t, a), acc in accs.items():
        d = write_run(tmp_path, f"temperature{t:g}_alpha{a:g}-s0", 0, acc, acc)
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        cfg["method"].update(temperature=t, alpha=a)
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = build_report(tmp_path, log=lambda s: None, calibration=False)
    hm = tmp_path / "plots" / "sweep_heatmap.png"
    assert str(hm) in res["plots"]
    assert_real_png(hm)


# -- planning ------------------------------------------------------------------------------
def _base_cfg(**over):
    from kdistill.config import validate_config

    raw = {
        "data": {"name": "synthetic", "batch_size": 64},
        "teacher": {"model": "mlp", "kwargs": {"hidden": [32]}},
        "student": {"model": "mlp", "kwargs": {"hidden": [8]}},
        "method": {"name": "kd", "temperature": 8.0, "alpha": 0.9},
        "train": {"epochs": 2, "lr": 0.003, "progress": False},
    }
    raw.update(over)
    return validate_config(raw)


def test_plan_sweep_and_grid_parsing():
    from kdistill.runs.grid import parse_grid, parse_seeds, plan_sweep

    grid = parse_grid(["method.temperature=1,2,4", "method.alpha=0.5,0.9", "student.kwargs.hidden=[[8],[16,16]]"])
    assert grid["method.temperature"] == [1, 2, 4] and grid["student.kwargs.hidden"] == [[8], [16, 16]]
    cells = plan_sweep(_base_cfg(), grid, [0, 1])
    assert len(cells) == 2 * (1 + 3 * 2 * 2)
    kd = next(
        c
        for c in cells
        if c.seed == 1
        and c.overrides == {"method.temperature": 4, "method.alpha": 0.5, "student.kwargs.hidden": [16, 16]}
    )
    assert kd.cfg.method["temperature"] == 4 and kd.cfg.method["alpha"] == 0.5 and kd.cfg.train.seed == 1
    assert kd.cfg.student.kwargs["hidden"] == [16, 16]
    assert [c.name for c in cells if c.group == "scratch"] == ["scratch-s0", "scratch-s1"]
    with pytest.raises(ConfigError):
        parse_grid(["method.temperature"])
    with pytest.raises(ConfigError, match="--seeds"):
        parse_grid(["train.seed=1,2"])
    with pytest.raises(ConfigError):
        parse_seeds("0,x")
    with pytest.raises(ConfigError):
        plan_sweep(_base_cfg(), parse_grid(["method.nonsense_key=1,2"]), [0])


def test_plan_methods_keeps_config_settings_for_same_method():
    from kdistill.runs.grid import plan_methods

    cells = plan_methods(_base_cfg(), ["kd", "ce"], [3])
    by = {c.name: c for c in cells}
    assert set(by) == {"scratch-s3", "kd-s3", "ce-s3"}
    assert by["kd-s3"].cfg.method["temperature"] == 8.0  # from the YAML, not the default
    assert by["scratch-s3"].cfg.method == {"name": "ce"}
    with pytest.raises(ConfigError):
        plan_methods(_base_cfg(), ["kd", "kd"], [0])


def test_compare_refuses_configs_with_different_data(tmp_path):
    from kdistill.runs.grid import plan_configs

    a = _base_cfg()
    b = _base_cfg(data={"name": "synthetic", "options": {"num_classes": 3}})
    with pytest.raises(ConfigError, match="different data"):
        plan_configs([("a", a), ("b", b)], [0])


def test_cli_usage_errors_exit_nonzero(tmp_path):
    from kdistill.cli import main

    cfg = tmp_path / "a.yaml"
    cfg.write_text(yaml.safe_dump(_base_cfg().model_dump(mode="json")))
    assert main(["compare", str(cfg), str(cfg), "--methods", "kd"]) == 2
    assert main(["compare", str(cfg), "--methods", "kd", "--seeds", "0,0", "--out", str(tmp_path / "o")]) == 2
    assert main(["report", str(tmp_path / "missing")]) == 2


# -- end to end ----------------------------------------------------------------------------
def _chromium() -> str | None:
    for c in ("/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium") or ""):
        if c and Path(c).is_file():
            return c
    return None


@pytest.fixture(scope="module")
def tiny_compare(tmp_path_factory):
    from kdistill.report.compare import run_grid
    from kdistill.runs.grid import plan_methods

    out = tmp_path_factory.mktemp("e2e") / "cmp"
    cells = plan_methods(_base_cfg(), ["kd"], [0, 1])
    logs: list[str] = []
    t0, c0 = time.perf_counter(), time.process_time()
    agg = run_grid(cells, out, log=logs.append)
    # on a shared, loaded machine wall time measures the neighbours; CPU time measures this grid
    seconds = min(time.perf_counter() - t0, time.process_time() - c0)
    return {"out": out, "cells": cells, "agg": agg, "logs": logs, "seconds": seconds}


def test_end_to_end_compare(tiny_compare):
    out, agg = tiny_compare["out"], tiny_compare["agg"]
    assert tiny_compare["seconds"] < 20
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "kd-s0",
        "kd-s1",
        "scratch-s0",
        "scratch-s1",
    ]
    # one teacher per seed, trained in the scratch cell and reused by the kd cell
    for s in (0, 1):
        assert (out / f"scratch-s{s}" / "teacher" / "model.safetensors").is_file()
        assert not (out / f"kd-s{s}" / "teacher").exists()
        kd_cfg = yaml.safe_load((out / f"kd-s{s}" / "config.yaml").read_text())
        assert kd_cfg["teacher"]["checkpoint"] == str(
            (out / f"scratch-s{s}" / "teacher" / "model.safetensors").resolve()
        )
        kd_res = json.loads((out / f"kd-s{s}" / "results.json").read_text())
        sc_res = json.loads((out / f"scratch-s{s}" / "results.json").read_text())
        assert kd_res["teacher"]["metrics"] == sc_res["teacher"]["metrics"]
    res = {
        n: json.loads((out / n / "results.json").read_text()) for n in ("kd-s0", "kd-s1", "scratch-s0", "scratch-s1")
    }
    kd, t = _row(agg, "kd"), _row(agg, "teacher")
    assert t["n"] == 2 and t["latency_ms_p50"] is not None
    a0, a1 = res["kd-s0"]["final"]["test"]["acc"], res["kd-s1"]["final"]["test"]["acc"]
    assert kd["last_acc"]["mean"] == pytest.approx((a0 + a1) / 2)
    assert kd["last_acc"]["std"] == pytest.approx(abs(a0 - a1) / math.sqrt(2))
    d = [res[f"kd-s{s}"]["final"]["test"]["acc"] - res[f"scratch-s{s}"]["final"]["test"]["acc"] for s in (0, 1)]
    assert kd["diff_last"]["mean"] == pytest.approx(sum(d) / 2)
    assert kd["diff_last"]["half_width"] == pytest.approx(
        12.706 * abs(d[0] - d[1]) / math.sqrt(2) / math.sqrt(2), rel=1e-3, abs=1e-9
    )
    saved = json.loads((out / "compare.json").read_text())
    assert saved["plan"]["ran"] == 4 and "| kd [mlp] | 2 |" in (out / "compare.md").read_text()


def test_end_to_end_rerun_skips_finished_cells(tiny_compare):
    from kdistill.report.compare import run_grid

    out = tiny_compare["out"]
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/results.json")}
    logs: list[str] = []
    t0 = time.perf_counter()
    agg = run_grid(tiny_compare["cells"], out, log=logs.append)
    assert time.perf_counter() - t0 < 5
    assert sum("finished earlier, skipped" in line for line in logs) == 4
    assert not any(line.startswith("epoch") for line in logs)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/results.json")} == stamps
    assert json.loads((out / "compare.json").read_text())["plan"]["skipped_finished"] == 4
    assert _row(agg, "kd")["last_acc"] == _row(tiny_compare["agg"], "kd")["last_acc"]


def test_end_to_end_changed_config_is_refused(tiny_compare):
    from kdistill.report.compare import run_grid
    from kdistill.runs.grid import plan_methods

    cells = plan_methods(_base_cfg(train={"epochs": 2, "lr": 0.01, "progress": False}), ["kd"], [0, 1])
    with pytest.raises(ConfigError, match="different config .*train.lr"):
        run_grid(cells, tiny_compare["out"], log=lambda s: None)


def test_end_to_end_report_rebuilds_models(tiny_compare):
    from kdistill.metrics import classification_metrics
    from kdistill.report import recompute
    from kdistill.report.html import build_report
    from kdistill.report.tables import load_run

    out = tiny_compare["out"]
    run = load_run(out / "kd-s0")
    test = recompute.test_data(run)
    m = classification_metrics(recompute.logits_of(recompute.student_model(run), test.x), test.y)
    assert m["acc"] == pytest.approx(run.test("final")["acc"])
    assert m["ece"] == pytest.approx(run.test("final")["ece"], abs=1e-6)
    tm = classification_metrics(recompute.logits_of(recompute.teacher_model(run), test.x), test.y)
    assert tm["acc"] == pytest.approx(run.teacher["metrics"]["test"]["acc"])

    res = build_report(out, log=lambda s: None)
    names = {Path(p).name for p in res["plots"]}
    assert {
        "learning_curves.png",
        "acc_vs_params.png",
        "acc_vs_latency.png",
        "reliability.png",
        "per_class.png",
    } <= names
    for p in res["plots"]:
        assert_real_png(Path(p))
    _check_html(Path(res["html"]), len(res["plots"]))

    single = build_report(out / "kd-s1", log=lambda s: None)  # one run folder works too
    assert {"reliability.png", "per_class.png", "learning_curves.png"} <= {Path(p).name for p in single["plots"]}


def test_report_renders_in_headless_chromium(tiny_compare, tmp_path):
    from matplotlib.image import imread

    from kdistill.report.html import build_report

    exe = _chromium()
    if exe is None:
        pytest.skip("chromium not installed (apt-get install -y chromium); cannot check the page renders")
    page = Path(build_report(tiny_compare["out"], log=lambda s: None, calibration=False)["html"])
    shot = tmp_path / "shot.png"
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        "--window-size=1200,1600",
        f"--user-data-dir={tmp_path / 'profile'}",
        page.resolve().as_uri(),
    ]
    subprocess.run(cmd, capture_output=True, timeout=90, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    img = imread(str(shot))[..., :3]
    non_white = float((img.min(-1) < 0.9).mean())
    assert non_white > 0.02, f"screenshot is blank ({100 * non_white:.2f}% non-white pixels)"
    assert float(img.var()) > 1e-3


def test_a_failing_cell_does_not_cost_the_grid(tmp_path):
    from kdistill.report.compare import run_grid
    from kdistill.runs.grid import plan_methods

    cfg = _base_cfg(teacher=None, train={"epochs": 1, "progress": False})
    logs: list[str] = []
    agg = run_grid(plan_methods(cfg, ["kd"], [0]), tmp_path / "g", log=logs.append)
    assert [f["run"] for f in agg["failed"]] == ["kd-s0"]
    assert "teacher" in agg["failed"][0]["reason"]
    assert [r["label"] for r in agg["rows"]] == ["scratch"]  # no teacher row without a teacher
    assert "kd-s0: failed:" in (tmp_path / "g" / "compare.md").read_text()


def test_scheme_configs_are_refused_by_compare():
    from kdistill.runs.grid import plan_methods

    cfg = _base_cfg().model_copy(update={"scheme": {"name": "ban"}})
    with pytest.raises(ConfigError, match="scheme"):
        plan_methods(cfg, ["kd"], [0])


def test_tables_follow_the_grid_order_of_compare_json(compare_dir):
    write_run(compare_dir, "at-s0", 0, 0.7, 0.7)
    plan = {"cells": [{"name": n} for n in ("scratch-s0", "kd-s0", "at-s0", "scratch-s1", "kd-s1")]}
    (compare_dir / "compare.json").write_text(json.dumps({"plan": plan}))
    assert [r["label"] for r in aggregate_dir(compare_dir)["rows"]] == ["teacher", "scratch", "kd", "at"]
    (compare_dir / "compare.json").unlink()  # without it: by folder name
    assert [r["label"] for r in aggregate_dir(compare_dir)["rows"]] == ["teacher", "scratch", "at", "kd"]


def test_teacher_sharing_keys():
    from kdistill.runs.grid import plan_methods, plan_sweep, teacher_key

    cells = plan_methods(_base_cfg(), ["kd"], [0, 1])
    per_seed = {c.name: teacher_key(c, "per-seed") for c in cells}
    assert per_seed["scratch-s0"] == per_seed["kd-s0"] != per_seed["kd-s1"]
    assert len({teacher_key(c, "shared") for c in cells}) == 1
    # a sweep over the teacher's training changes the teacher; over the method it does not
    sw = plan_sweep(_base_cfg(), {"teacher.train.lr": [0.01, 0.02], "method.alpha": [0.5, 0.9]}, [0])
    assert len({teacher_key(c, "per-seed") for c in sw if c.group != "scratch"}) == 2
    with_ckpt = _base_cfg(teacher={"model": "mlp", "checkpoint": "t.safetensors"})
    assert all(teacher_key(c, "per-seed") is None for c in plan_methods(with_ckpt, ["kd"], [0]))


def test_html_escapes_folder_names(tmp_path):
    from kdistill.report.html import build_report

    write_run(tmp_path, "scratch-s0", 0, 0.7, 0.7)
    write_run(tmp_path, "<b>x&y-s0", 0, 0.8, 0.8)
    page = Path(build_report(tmp_path, log=lambda s: None, calibration=False)["html"]).read_text()
    assert "&lt;b&gt;x&amp;y" in page and "<b>" not in page
