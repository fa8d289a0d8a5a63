"""Issue 26, int8: defaults read from the CPU and the data, a compact int8 file, latency
with a plain remark, and the int8 ONNX carrying the run's contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kdistill.config import validate_config
from kdistill.quantize import load_int8, quantize_run
from kdistill.quantize.core import default_calib
from kdistill.quantize.isa import cpu_flags, full_range_exact
from kdistill.quantize.run import speed_remark
from kdistill.runs import run_experiment

pytest.importorskip("torchao")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_isa_flags_decide_the_range(tmp_path):
    vnni = tmp_path / "vnni"
    vnni.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    avx2 = tmp_path / "avx2"
    avx2.write_text("model name\t: Old CPU\nflags\t\t: fpu sse avx2 avx_vnni_int8\n")
    got = cpu_flags(vnni)
    assert got["flags"] == ["avx2", "avx512f", "avx512_vnni"] and got["readable"] and full_range_exact(got)
    assert not full_range_exact(cpu_flags(avx2))  # a flag that merely starts like one does not count
    missing = cpu_flags(tmp_path / "nothing")
    assert missing["flags"] == [] and not missing["readable"] and not full_range_exact(missing)
    assert full_range_exact(cpu_flags(Path(__file__).parent / "nope")) is False


def test_default_calib_is_what_the_data_has():
    assert default_calib(259) == 259 and default_calib(10_000) == 512 and default_calib(32) == 32


def test_speed_remark_says_slower_plainly():
    lat = {"b1": {"float": {"p50": 1.0}, "int8": {"p50": 1.5}}, "b64": {"float": {"p50": 8.0}, "int8": {"p50": 4.0}}}
    r = speed_remark(lat, {"flags": ["avx2"]})
    assert r["int8_slower"] and "SLOWER" in r["remark"] and "batch 1" in r["remark"] and "no VNNI" in r["remark"]
    assert r["speedup_by_batch"] == pytest.approx({"b1": 2 / 3, "b64": 2.0})
    fast = speed_remark({"b1": {"float": {"p50": 2.0}, "int8": {"p50": 1.0}}}, {"flags": ["avx512_vnni"]})
    assert not fast["int8_slower"] and "2.00x" in fast["remark"]


@pytest.fixture(scope="module")
def big_run(tmp_path_factory) -> Path:
    """An MLP of about 133k parameters on 48 synthetic samples (fewer than 512)."""
    run_dir = tmp_path_factory.mktemp("q8") / "run"
    cfg = {"data": {"name": "synthetic", "options": {"input_shape": [1, 256], "n_train": 48, "n_test": 32},
                    "batch_size": 16, "eval_batch_size": 16},
           "student": {"model": "mlp", "kwargs": {"hidden": [512]}}, "method": {"name": "ce"},
           "train": {"epochs": 1, "progress": False, "device": "cpu", "lr": 1e-3}}
    run_experiment(validate_config(cfg), run_dir, log=lambda s: None)
    return run_dir


def test_default_quantize_is_compact_exact_on_this_cpu_and_measured(big_run):
    lines = []
    res = quantize_run(big_run, "ptq", log=lines.append)
    assert res["calib"] == 48  # the whole training set, not a failing 512
    assert res["reduce_range"] is (not full_range_exact())
    assert "48 calibration samples" in lines[0] and "activations" in lines[0]
    saved = json.loads((big_run / "int8" / "ptq" / "quantize.json").read_text())
    assert saved["cpu"]["flags"] == cpu_flags()["flags"]
    assert set(saved["onnx"]["latency_ms"]) == {"b1", "b64"} and saved["speed"]["remark"] in lines
    assert saved["onnx"]["parity_int8_pytorch"]["passed"]
    float_bytes = (big_run / "model.safetensors").stat().st_size
    int8_bytes = (big_run / "int8" / "ptq" / "quantized.safetensors").stat().st_size
    assert saved["float_param_bytes"] > 4 * 100_000
    assert int8_bytes <= 0.3 * float_bytes, (int8_bytes, float_bytes)
    # the compact file rebuilds the very int8 model quantize measured: same test accuracy, int8 weights
    from kdistill.config import load_config
    from kdistill.runs import prepare_data

    q, _ = load_int8(big_run, "ptq")
    test = prepare_data(load_config(big_run / "config.yaml")).test
    batch = test.take(torch.arange(len(test)))
    with torch.no_grad():
        acc = float((q(batch["x"]).argmax(1) == batch["y"]).float().mean())
    assert acc == pytest.approx(saved["test"]["acc_int8"], abs=1e-9)
    assert any(t.dtype == torch.int8 and t.numel() == 256 * 512 for t in q.int8.state_dict().values())


def test_qat_graph_with_batchnorm_reloads_from_the_compact_file(tmp_path):
    from kdistill.config import load_config
    from kdistill.runs import prepare_data

    cfg = {"data": {"name": "synthetic", "options": {"input_shape": [3, 8, 8], "n_train": 40, "n_test": 24},
                    "batch_size": 8, "eval_batch_size": 8},
           "student": {"model": "convnet", "kwargs": {"layers": 4}}, "method": {"name": "ce"},
           "train": {"epochs": 1, "progress": False, "device": "cpu"}}
    run_experiment(validate_config(cfg), tmp_path / "run", log=lambda s: None)
    res = quantize_run(tmp_path / "run", "qat", epochs=1, onnx=False, log=lambda s: None)
    assert res["batchnorm_left"] == 0
    q, _ = load_int8(tmp_path / "run", "qat")
    test = prepare_data(load_config(tmp_path / "run" / "config.yaml")).test
    batch = test.take(torch.arange(len(test)))
    with torch.no_grad():
        acc = float((q(batch["x"]).argmax(1) == batch["y"]).float().mean())
    assert acc == pytest.approx(res["test"]["acc_int8"], abs=1e-9)
