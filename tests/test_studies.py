"""The benchmark studies (benchmarks/studies): every cell's config is valid, each study runs
end to end at a tiny scale and writes its table with provenance, and the table's statistics
are the hand-computed ones."""

from __future__ import annotations

import gzip
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "studies"))

import run_study as rs  # noqa: E402
from studies import STUDIES  # noqa: E402

from kdistill.config import validate_config  # noqa: E402
from kdistill.errors import ConfigError  # noqa: E402
from kdistill.schemes import parse_settings  # noqa: E402

FMNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def tiny_fmnist(tmp_path_factory) -> Path:
    """A Fashion-MNIST folder with 300 train / 100 test images: the real first ones when the
    Debian files exist, else random images (the runner's plumbing is what is tested)."""
    root = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    for stem, n in (("train", 300), ("t10k", 100)):
        if (FMNIST_ROOT / f"{stem}-images-idx3-ubyte.gz").is_file():
            from kdistill.data.idx import read_idx

            x = read_idx(FMNIST_ROOT / f"{stem}-images-idx3-ubyte.gz")[:n]
            y = read_idx(FMNIST_ROOT / f"{stem}-labels-idx1-ubyte.gz")[:n]
        else:
            x = rng.integers(0, 256, (n, 28, 28))
            y = np.arange(n) % 10
        _write_idx(root / f"{stem}-images-idx3-ubyte.gz", x)
        _write_idx(root / f"{stem}-labels-idx1-ubyte.gz", y)
    return root


def test_epochs_scale_rounds_and_never_reaches_zero():
    assert rs.scale_epochs(20, 0.1) == 2
    assert rs.scale_epochs(8, 0.1) == 1  # 0.8 rounds to 1
    assert rs.scale_epochs(60, 0.25) == 15
    assert rs.scale_epochs(3, 0.01) == 1
    assert rs.scale_epochs(40, "tiny") == 1


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_every_cell_of_every_study_is_a_valid_config(name, tmp_path):
    study = STUDIES[name]()
    groups = [c.group for c in study.cells]
    assert len(set(groups)) == len(groups)
    assert sum(c.role == "student" for c in study.cells) == 1
    cells = rs.plan(study, [0, 1, 2])
    # sweep points run on the first seed only
    assert len(cells) == 3 * len(study.cells) - 2 * sum(c.first_seed_only for c in study.cells)
    for spec, seed in cells:
        raw = rs.cell_config(study, spec, seed, tmp_path, 0.5, "cpu", [])
        cfg = validate_config(raw)
        assert cfg.train.seed == seed
        assert cfg.data.val_split == 0.1  # every choice on validation data
        assert cfg.train.epochs == rs.scale_epochs(spec.config["train"]["epochs"], 0.5)
        if spec.teacher_from:
            # the teacher is the teacher cell of the same seed, never retrained
            assert cfg.teacher.checkpoint == str((tmp_path / f"{spec.teacher_from}-s{seed}" / "model.safetensors").resolve())
            assert cfg.teacher.model == study.cell(spec.teacher_from).config["student"]["model"]
        if cfg.scheme:
            s = dict(cfg.scheme)
            parse_settings(s.pop("name"), s)
        if cfg.data.transfer is not None:
            # one generated set per study; each cell reads a prefix of the size it asks for
            assert cfg.data.transfer.source == "npz"
            assert cfg.data.transfer.size == spec.config["data"]["transfer"]["size"]
            assert Path(cfg.data.transfer.path) == tmp_path / "_transfer" / "mnist1d-n100000-seed1-len40.npz"


@pytest.mark.parametrize("name", ["methods_fmnist", "methods_fmnist_cpu"])
def test_methods_study_covers_every_registered_method(name):
    from kdistill.methods import METHODS
    from kdistill.methods._token_method import TokenDivergence

    study = STUDIES[name]()
    distilled = {c.group for c in study.cells if c.role == "distilled"}
    vision = {m for m in METHODS.names() if m != "ce" and not issubclass(METHODS.get(m), TokenDivergence)
              and not getattr(METHODS.get(m), "student_contract", "")  # DeiT: a two-head student
              and not getattr(METHODS.get(m), "cross_tokenizer", False)}  # uld, gold: another tokenizer
    # every image method with its defaults, plus logit standardization and DOT as settings of others
    assert distilled == vision | {"kd_ls", "dkd_ls", "mlkd_ls", "kd_dot"}
    assert {"mlkd", "ctkd", "skd", "dist_plus"} <= distilled
    assert study.cell("kd_dot").config["train"]["optimizer"] == "dot"
    assert study.cell("mlkd_ls").config["method"] == {"name": "mlkd", "standardize": True}


def test_only_refuses_an_unknown_group():
    with pytest.raises(ConfigError, match="kd_T21"):
        rs.plan(STUDIES["hinton_fmnist"](), [0], ["kd_T21"])


def _fake_cell(d: Path, acc_last: float, acc_best: float, val: float, n_test: int = 1000) -> None:
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({
        "dataset": {"test": n_test}, "final": {"test": {"acc": acc_last}},
        "best": {"test": {"acc": acc_best}, "val": {"acc": val}, "selected_on": "val"}}))
    (d / "study_cell.json").write_text(json.dumps({"command": "cmd", "commit": "abc", "hardware": "hw",
                                                   "epochs": 3, "wall_s": 1.5}))


def test_table_statistics_are_the_hand_computed_ones(tmp_path):
    study = STUDIES["hinton_fmnist"]()
    sd = tmp_path / "hinton_fmnist"
    student = {0: 0.90, 1: 0.91, 2: 0.89}
    kd = {0: 0.92, 1: 0.92, 2: 0.92}
    for s in (0, 1, 2):
        _fake_cell(sd / f"student-s{s}", student[s], student[s] + 0.001, 0.5)
        _fake_cell(sd / f"kd_T20_mlp_teacher-s{s}", kd[s], kd[s], 0.5)
    res = rs.build_table(study, sd, [0, 1, 2], [])
    rows = {r["label"]: r for r in res["rows"]}
    assert list(rows) == ["student", "kd_T20_mlp_teacher"]
    assert res["partial"] and "teacher_mlp-s0" in res["missing_cells"]
    st = rows["student"]["last_acc"]
    assert st["mean"] == pytest.approx(0.90) and st["std"] == pytest.approx(0.01)
    diff = rows["kd_T20_mlp_teacher"]["diff_last"]  # differences 0.02, 0.01, 0.03
    assert diff["mean"] == pytest.approx(0.02) and diff["std"] == pytest.approx(0.01)
    # 95% t-interval, t_{0.975,2} = 4.303
    assert diff["ci_high"] - diff["mean"] == pytest.approx(4.303 * 0.01 / math.sqrt(3), abs=1e-4)
    # test errors out of n_test, as Hinton et al. report them
    assert rows["student"]["last_errors"]["mean"] == pytest.approx(100.0)
    assert rows["kd_T20_mlp_teacher"]["wall_s"] == pytest.approx(4.5)
    md = rs.render_markdown(study, res | {"invocation": {}})
    assert "**PARTIAL**" in md and "| student | 0,1,2 | 90.10 ± 1.00 | 90.00 ± 1.00 |" in md
    assert "+2.00 [" in md


# one teacher (if any), the student alone and one distilled or scheme cell per study
TINY_CELLS = {
    "hinton_fmnist": ["teacher_mlp", "student", "kd_T20_mlp_teacher"],
    "takd_fmnist": ["teacher_convnet4", "student", "kd_from_teacher_convnet4"],
    "takd_mnist1d": ["teacher_cnn1d_c16", "student", "kd_from_teacher_cnn1d_c16"],
    "methods_fmnist": ["teacher", "student", "crd"],
    "methods_fmnist_cpu": ["teacher", "student", "mlkd_ls"],
    "schemes_mnist1d": ["student", "dml"],
    "transfer_mnist1d": ["teacher", "student", "kd_transfer_5k", "munge_25k"],
}


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_study_runs_tiny_and_writes_its_table(name, tmp_path, tiny_fmnist):
    study = STUDIES[name]()
    data = "fashion-mnist" if study.cells[0].config["data"]["name"].startswith("fashion-mnist") else "mnist1d"
    sets = [f"data.root={tiny_fmnist}"] if data == "fashion-mnist" else ["data.options.num_samples=300"]
    if name == "transfer_mnist1d":  # the MUNGE set and the generated transfer set, kept tiny
        sets += ["scheme.size=600", "data.transfer.size=200"]
    lines: list[str] = []
    res = rs.run_study(name, tmp_path, [0], rs.TINY, "cpu", None, sets, command="pytest-cmd",
                       only=TINY_CELLS[name], log=lines.append)
    sd = tmp_path / name
    assert (sd / "RESULTS.md").is_file()
    on_disk = json.loads((sd / "results.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(res["rows"]))
    labels = [r["label"] for r in res["rows"]]
    for g in TINY_CELLS[name]:
        assert g in labels or any(lab.startswith(f"{g}: ") for lab in labels)
    # only some cells ran: the table says it is partial and names the rest
    assert res["partial"]
    assert set(res["missing_cells"]) == {f"{c.group}-s0" for c in study.cells} - {f"{g}-s0" for g in TINY_CELLS[name]}
    inv = on_disk["invocation"]
    assert inv["command"] == "pytest-cmd" and inv["seeds"] == [0]
    assert inv["commit"] and "cores" in inv["hardware"]
    for r in res["rows"]:
        assert r["commands"] == ["pytest-cmd"] and r["epochs"] == [1] and r["wall_s"] > 0
        assert r["hardware"] == [inv["hardware"]] and r["commits"] == [inv["commit"]]
        assert 0.0 <= r["last_acc"]["mean"] <= 1.0
    student = next(r for r in res["rows"] if r["role"] == "student")
    for r in res["rows"]:
        if r["role"] in ("distilled", "scheme"):
            assert r["diff_last"]["mean"] == pytest.approx(r["last_acc"]["mean"] - student["last_acc"]["mean"])
    md = (sd / "RESULTS.md").read_text()
    assert "**PARTIAL**" in md and "pytest-cmd" in md and inv["hardware"] in md
    if study.show_errors:
        n = res["n_test"]
        assert n == 100 and f"errors /{n}" in md
        assert student["last_errors"]["mean"] == pytest.approx((1 - student["last_acc"]["mean"]) * n)

    if name == "transfer_mnist1d":
        cell = json.loads((sd / "kd_transfer_5k-s0" / "results.json").read_text())
        assert cell["dataset"]["transfer"] == 200
        assert (sd / "_transfer" / "mnist1d-n200-seed1-len40.npz").is_file()
        assert json.loads((sd / "student-s0" / "results.json").read_text())["dataset"]["transfer"] == 0

    # a second invocation reuses every finished cell
    again: list[str] = []
    rs.run_study(name, tmp_path, [0], rs.TINY, "cpu", None, sets, command="pytest-cmd",
                 only=TINY_CELLS[name], log=again.append)
    assert sum("finished earlier, skipped" in x for x in again) == len(TINY_CELLS[name])
    assert not any(x.endswith(": running") for x in again)


def test_max_minutes_zero_runs_nothing_and_says_partial(tmp_path):
    lines: list[str] = []
    res = rs.run_study("takd_mnist1d", tmp_path, [0, 1], rs.TINY, "cpu", 0.0, [], command="c", log=lines.append)
    study = STUDIES["takd_mnist1d"]()
    assert res["rows"] == [] and res["partial"]
    assert len(res["not_run_this_time"]) == 2 * len(study.cells)
    assert "**PARTIAL**" in (tmp_path / "takd_mnist1d" / "RESULTS.md").read_text()
    assert sum("budget is spent" in x for x in lines) == 2 * len(study.cells)


def test_a_distilled_cell_whose_teacher_never_ran_is_not_started(tmp_path):
    lines: list[str] = []
    res = rs.run_study("takd_mnist1d", tmp_path, [3], rs.TINY, "cpu", None, [], command="c",
                       only=["kd_from_teacher_cnn1d_c16"], log=lines.append)
    assert res["not_run_this_time"] == ["kd_from_teacher_cnn1d_c16-s3"]
    assert any("teacher cell teacher_cnn1d_c16-s3 has no results" in x for x in lines)
    assert not (tmp_path / "takd_mnist1d" / "kd_from_teacher_cnn1d_c16-s3").exists()


def test_an_unfinished_cell_started_with_another_config_is_refused(tmp_path):
    study = STUDIES["takd_mnist1d"]()
    spec = study.cell("teacher_cnn1d_c16")
    cell = tmp_path / "takd_mnist1d" / "teacher_cnn1d_c16-s0"
    cell.mkdir(parents=True)
    # an interrupted run at another epochs scale: config written, no results.json
    first = rs.cell_config(study, spec, 0, tmp_path / "takd_mnist1d", 0.5, "cpu", [])
    (cell / "config.yaml").write_text(rs.dump_config(validate_config(first)))
    with pytest.raises(ConfigError, match="different config"):
        rs.run_study("takd_mnist1d", tmp_path, [0], 0.25, "cpu", None, [], command="c",
                     only=["teacher_cnn1d_c16"], log=lambda _: None)


def test_cache_teachers_reads_the_teacher_from_a_cache_with_the_live_teachers_numbers(tmp_path, tiny_fmnist):
    sets = [f"data.root={tiny_fmnist}"]
    only = ["teacher_mlp", "student", "kd_T20_mlp_teacher"]
    live = rs.run_study("hinton_fmnist", tmp_path / "live", [0], rs.TINY, "cpu", None, sets, command="c",
                        only=only, log=lambda s: None)
    lines: list[str] = []
    cached = rs.run_study("hinton_fmnist", tmp_path / "cached", [0], rs.TINY, "cpu", None, sets, command="c",
                          only=only, log=lines.append, cache_teachers=True)
    sd = tmp_path / "cached" / "hinton_fmnist"
    cell = json.loads((sd / "kd_T20_mlp_teacher-s0" / "study_cell.json").read_text())
    cache = Path(cell["teacher_cache"])
    assert cache.parent == sd / "teacher_mlp-s0" and (cache / "meta.json").is_file()
    assert f"cache: {cache}" in (sd / "kd_T20_mlp_teacher-s0" / "config.yaml").read_text()
    assert sum("teacher cache" in x and "built" in x for x in lines) == 1
    # the same teacher outputs, so the same student: the cache only skips the forward passes
    row = {r["label"]: r for r in cached["rows"]}["kd_T20_mlp_teacher"]
    ref = {r["label"]: r for r in live["rows"]}["kd_T20_mlp_teacher"]
    assert row["last_acc"]["mean"] == pytest.approx(ref["last_acc"]["mean"], abs=0.011)
    res = json.loads((sd / "kd_T20_mlp_teacher-s0" / "results.json").read_text())
    ref_res = json.loads((tmp_path / "live" / "hinton_fmnist" / "kd_T20_mlp_teacher-s0" / "results.json").read_text())
    assert res["final"]["test"]["nll"] == pytest.approx(ref_res["final"]["test"]["nll"], rel=1e-3)
    assert res["final"]["test"]["agreement"] == pytest.approx(ref_res["final"]["test"]["agreement"], abs=0.011)


@pytest.mark.parametrize(("raw", "why"), [
    ({"data": {"augment": {"shift": 2}}, "method": {"name": "kd"}}, "augmented"),
    ({"data": {"transfer": {"size": 5}}, "method": {"name": "kd"}}, "transfer set"),
    ({"data": {}, "method": [{"name": "kd"}, {"name": "crd"}]}, "crd read(s) more than the teacher's logits"),
])
def test_cells_a_cache_cannot_serve_keep_the_live_teacher(raw, why):
    raw = {**raw, "teacher": {"model": "mlp", "checkpoint": "/nonexistent/model.safetensors"}}
    lines: list[str] = []
    assert rs.use_teacher_cache(raw, lines.append) is None
    assert raw["teacher"]["model"] == "mlp" and why in lines[0]


def test_paired_vs_compares_every_row_with_the_chosen_one_seed_by_seed():
    import paired_vs

    def row(group, role, accs):
        from kdistill.report.tables import summarize

        return {"label": group, "group": group, "role": role, "seeds": sorted(accs),
                "last_acc": summarize(list(accs.values())), "last_acc_by_seed": {str(k): v for k, v in accs.items()}}

    res = {"rows": [row("teacher", "teacher", {0: 0.9, 1: 0.9}), row("student", "student", {0: 0.80, 1: 0.82}),
                    row("kd", "distilled", {0: 0.84, 1: 0.85}), row("mlkd", "distilled", {0: 0.86, 1: 0.88})]}
    md = paired_vs.table(res, "kd")
    lines = {line.split(" | ")[0].strip("| "): line for line in md.splitlines()[2:]}
    # mlkd - kd per seed: +2 and +3 points -> mean +2.50; vs the student: +6, +6 -> +6.00 with a zero-width interval
    assert "| +6.00 [+6.00, +6.00] | +2.50 [" in lines["mlkd"]
    assert lines["kd"].endswith("| - | 3 |")  # kd against itself: no difference; third by accuracy
    assert lines["mlkd"].endswith("| 2 |") and "| 87.00 ± 1.41 |" in lines["mlkd"]
