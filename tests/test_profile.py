"""Profiling: hand-counted FLOPs, file bytes, latency statistics, teacher vs student runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from kdistill.cli import main
from kdistill.config import validate_config
from kdistill.engine.checkpoint import state_dict_tensors
from kdistill.errors import ConfigError
from kdistill.models import create_model
from kdistill.profile import (
    compare,
    count_params,
    flops_per_sample,
    latency_ms,
    param_bytes,
    profile_model,
    profile_run,
    safetensors_bytes,
)
from kdistill.runs import run_experiment

HAS_ORT = True
try:
    import onnxruntime  # noqa: F401
except ImportError:
    HAS_ORT = False


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tests share two cores with other processes; one intra-op thread keeps timings sane
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def mlp_flops(d_in: int, hidden: list[int], classes: int) -> int:
    widths = [d_in, *hidden, classes]
    return sum(2 * a * b for a, b in zip(widths, widths[1:]))


def test_flops_by_hand():
    # MLP 32 -> 16 -> 4: 2 FLOPs per multiply-add, biases and ReLU not counted
    assert flops_per_sample(create_model("mlp", 4, (1, 32), hidden=[16]), (1, 32)) == 2 * (32 * 16 + 16 * 4)
    # cnn1d on length 32, 8 channels: conv lengths 15, 8, 4 (kernel 5/3/3, stride 2, pad 1)
    conv = 2 * (15 * 8 * 1 * 5 + 8 * 8 * 8 * 3 + 4 * 8 * 8 * 3)
    head = 2 * (8 * 4) * 4
    assert flops_per_sample(create_model("cnn1d", 4, (1, 32), channels=8), (1, 32)) == conv + head
    # per sample: the count does not depend on a batch axis or on train mode
    m = create_model("mlp", 10, (1, 28, 28), hidden=[100]).train()
    assert flops_per_sample(m, (1, 28, 28)) == 2 * (784 * 100 + 100 * 10) and m.training


def test_bytes_and_params(tmp_path):
    m = create_model("mlp", 4, (1, 32), hidden=[16])
    assert count_params(m) == 32 * 16 + 16 + 16 * 4 + 4
    assert param_bytes(m) == 4 * count_params(m)
    save_file(state_dict_tensors(m), str(tmp_path / "m.safetensors"))
    size = (tmp_path / "m.safetensors").stat().st_size
    assert safetensors_bytes(m) == size
    assert size > param_bytes(m)  # the JSON header comes on top of the raw tensors


def test_latency_statistics():
    m = create_model("mlp", 4, (1, 32), hidden=[16])
    lat = latency_ms(m, (1, 32), batch_size=3, repeats=9, warmup=1)
    assert 0 < lat["p50"] <= lat["p95"]
    assert lat["batch_size"] == 3 and lat["repeats"] == 9 and lat["threads"] == 1


def test_profile_model_backends():
    m = create_model("cnn1d", 4, (1, 32), channels=8)
    out = profile_model(m, (1, 32), batch_sizes=(1, 4), repeats=3, warmup=1, onnx=HAS_ORT, cuda=False)
    want = {"pytorch/cpu/b1", "pytorch/cpu/b4"} | ({"onnxruntime/cpu/b1", "onnxruntime/cpu/b4"} if HAS_ORT else set())
    assert set(out["latency_ms"]) == want
    assert all(v["p50"] > 0 and v["p95"] >= v["p50"] for v in out["latency_ms"].values())
    if HAS_ORT:
        assert out["onnx"].startswith("onnxruntime") and out["latency_ms"]["onnxruntime/cpu/b1"]["threads"] == 1
    assert out["params"] == count_params(m) and out["flops_per_sample"] == flops_per_sample(m, (1, 32))


def test_compare_ratios():
    t = {"params": 100, "file_bytes": 400, "flops_per_sample": 50, "latency_ms": {"a": {"p50": 6.0}, "b": {"p50": 1.0}}}
    s = {"params": 10, "file_bytes": 80, "flops_per_sample": 0, "latency_ms": {"a": {"p50": 2.0}, "c": {"p50": 1.0}}}
    c = compare(t, s)
    assert c["params_ratio"] == 10 and c["bytes_ratio"] == 5 and c["flops_ratio"] == math.inf
    assert c["speedup_p50"] == {"a": 3.0} and c["speedup_p50_unreliable"] == {}
    s["latency_ms"]["a"]["reliable"] = False
    assert compare(t, s)["speedup_p50"] == {} and compare(t, s)["speedup_p50_unreliable"] == {"a": 3.0}


def _run(root: Path, name: str, teacher: dict) -> Path:
    cfg = validate_config({
        "data": {"name": "synthetic", "options": {"input_shape": [1, 32], "n_train": 64, "n_test": 32}, "batch_size": 32},
        "teacher": teacher,
        "student": {"model": "mlp", "kwargs": {"hidden": [8]}},
        "method": {"name": "kd"},
        "train": {"epochs": 1, "progress": False, "device": "cpu"},
    })
    run_run = root / name
    run_experiment(cfg, run_run, log=lambda s: None)
    return run_run


@pytest.fixture(scope="module")
def big_teacher_run(tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("prof"), "run", {"model": "mlp", "kwargs": {"hidden": [512, 512]}})


def test_profile_run_teacher_vs_student(big_teacher_run):
    run = big_teacher_run
    res = profile_run(run, batch_sizes=(1, 64), repeats=15, warmup=3, onnx=False)
    s, t, c = res["student"], res["teacher"], res["compare"]
    assert s["params"] == 32 * 8 + 8 + 8 * 4 + 4
    assert t["params"] == 32 * 512 + 512 + 512 * 512 + 512 + 512 * 4 + 4
    assert c["params_ratio"] == pytest.approx(t["params"] / s["params"]) and c["params_ratio"] > 100
    assert s["file_bytes"] == (run / "model.safetensors").stat().st_size
    assert t["file_bytes"] == (run / "teacher" / "model.safetensors").stat().st_size
    assert c["bytes_ratio"] > 50
    assert s["flops_per_sample"] == mlp_flops(32, [8], 4) and t["flops_per_sample"] == mlp_flops(32, [512, 512], 4)
    # 0.6 MFLOP x 64 against 0.6 kFLOP x 64: the student must be faster at batch 64 (on a busy
    # machine the ratio is kept apart from the trusted ones, but it is still measured)
    assert {**c["speedup_p50"], **c["speedup_p50_unreliable"]}["pytorch/cpu/b64"] > 1
    assert json.loads((run / "profile.json").read_text())["compare"]["params_ratio"] == c["params_ratio"]


def test_teacher_from_results_record(big_teacher_run, tmp_path):
    # a teacher given by checkpoint is not copied into the run: it is found via results.json
    ckpt = big_teacher_run / "teacher" / "model.safetensors"
    run = _run(tmp_path, "ckpt", {"model": "mlp", "kwargs": {"hidden": [512, 512]}, "checkpoint": str(ckpt)})
    assert not (run / "teacher").exists()
    res = profile_run(run, batch_sizes=(1,), repeats=3, warmup=1, onnx=False)
    assert res["teacher"]["params"] == count_params(create_model("mlp", 4, (1, 32), hidden=[512, 512]))
    assert res["teacher"]["file_bytes"] == ckpt.stat().st_size


def test_ensemble_teacher_is_summed(tmp_path):
    members = [{"model": "mlp", "kwargs": {"hidden": [32]}}, {"model": "mlp", "kwargs": {"hidden": [64]}}]
    run = _run(tmp_path, "ens", {"ensemble": members})
    res = profile_run(run, batch_sizes=(1,), repeats=3, warmup=1, onnx=False, threads=1)
    t = res["teacher"]
    assert [m["params"] for m in t["members"]] == [32 * 32 + 32 + 32 * 4 + 4, 32 * 64 + 64 + 64 * 4 + 4]
    assert t["params"] == sum(m["params"] for m in t["members"])
    assert t["flops_per_sample"] == mlp_flops(32, [32], 4) + mlp_flops(32, [64], 4)
    key = "pytorch/cpu/b1"
    assert t["latency_ms"][key]["p50"] == pytest.approx(sum(m["latency_ms"][key]["p50"] for m in t["members"]))
    assert res["settings"]["threads"] == 1


def test_cli_profile(big_teacher_run, capsys):
    args = ["profile", "--model", "mlp", "--input-shape", "1,32", "--num-classes", "4", "--kwargs",
            '{"hidden": [16]}', "--repeats", "2", "--warmup", "0", "--no-onnx", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["student"]["flops_per_sample"] == mlp_flops(32, [16], 4)
    assert main(["profile", str(big_teacher_run), "--repeats", "2", "--warmup", "0", "--no-onnx"]) == 0
    assert "teacher / student" in capsys.readouterr().out
    assert main(["profile", "--model", "mlp", "--input-shape", "1,x"]) == ConfigError.exit_code
    assert main(["profile"]) == ConfigError.exit_code


# each spinner stops when its parent is gone (reparented), so none outlives the test even
# if the group kill below is missed
SPIN = "import multiprocessing as mp, os, time\n" \
       "def spin(parent): \n    while os.getppid() == parent: pass\n" \
       "if __name__ == '__main__':\n" \
       "    ps = [mp.Process(target=spin, args=(os.getpid(),), daemon=True) for _ in range(os.cpu_count() + 1)]\n" \
       "    [p.start() for p in ps]\n    time.sleep(120)\n"


def test_profile_under_a_busy_cpu_flags_rows_and_prints_no_ratio(tmp_path, capsys):
    import os
    import signal
    import subprocess
    import sys
    import time

    run = _run(tmp_path, "tiny", {"model": "mlp", "kwargs": {"hidden": [16]}})
    busy = subprocess.Popen([sys.executable, "-c", SPIN], start_new_session=True)  # its own process group
    try:
        time.sleep(1.0)  # the spinners start
        t0 = time.perf_counter()
        code = main(["profile", str(run), "--no-onnx", "--seconds", "0.5", "--warmup", "1", "--batch-sizes", "1,8"])
        took = time.perf_counter() - t0
    finally:
        os.killpg(busy.pid, signal.SIGKILL)  # the spinners with their parent
        busy.wait()
    out = capsys.readouterr().out
    assert code == 0 and took < 60  # bounded by time: seconds, not minutes
    saved = json.loads((run / "profile.json").read_text())
    for who in ("student", "teacher"):
        rows = saved[who]["latency_ms"]
        assert set(rows) == {"pytorch/cpu/b1", "pytorch/cpu/b8"}
        assert all(not r["reliable"] and r["others_load_pct"] > 50 for r in rows.values()), rows
    assert saved["compare"]["speedup_p50"] == {} and set(saved["compare"]["speedup_p50_unreliable"]) == set(rows)
    latency_lines = [ln for ln in out.splitlines() if ln.startswith("│ pytorch/cpu/b")]
    assert len(latency_lines) == 2 and all(ln.count(" !") == 2 and "no ratio" in ln for ln in latency_lines)
    assert "unreliable" in out and "other processes used" in out
    assert not any(ln.rstrip(" │|").endswith("x") for ln in latency_lines)
