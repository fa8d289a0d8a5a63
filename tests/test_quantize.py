"""int8 quantization (torchao PT2E): PTQ, QAT, QAD, int8 ONNX export, and every bad input,
on tiny synthetic runs. Each capture + prepare + convert costs seconds on two busy cores,
so the tests share one trained run and quantize it as few times as the checks allow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from kdistill.config import validate_config
from kdistill.losses import hard_label_ce, kd_loss
from kdistill.runs import run_experiment

pytest.importorskip("torchao")
quantize = pytest.importorskip("kdistill.quantize")
from kdistill.quantize import QuantizeError, load_int8, qad_loss, quantize_model, quantize_run  # noqa: E402
from kdistill.quantize.backend import float_layers, prepare, set_mode  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(student_layers: int = 6, teacher: bool = True, epochs: int = 2) -> dict:
    cfg = {
        "data": {"name": "synthetic", "options": {"input_shape": [1, 8, 8], "n_train": 384, "n_test": 256,
                                                  "noise": 2.0}, "batch_size": 32, "eval_batch_size": 128},
        "student": {"model": "convnet", "kwargs": {"layers": student_layers}},
        "method": {"name": "kd"} if teacher else {"name": "ce"},
        "train": {"epochs": epochs, "progress": False, "device": "cpu", "lr": 3e-3},
    }
    if teacher:
        cfg["teacher"] = {"model": "convnet", "kwargs": {"layers": 8}, "train": {"epochs": 3}}
    return cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A trained conv student (6 conv layers, BatchNorm after each) with a trained teacher."""
    run_dir = tmp_path_factory.mktemp("q") / "run"
    torch.manual_seed(0)
    run_experiment(validate_config(_cfg()), run_dir, log=lambda s: None)
    return run_dir


@pytest.fixture(scope="module")
def ptq(run) -> dict:
    return quantize_run(run, "ptq", calib=128, onnx=False, log=lambda s: None)


def test_ptq_keeps_agreement_folds_batchnorm_and_stores_int8(run, ptq):
    t = ptq["test"]
    assert t["agreement_int8_float"] >= 0.97, t
    assert abs(t["acc_int8"] - t["acc_float"]) <= 0.03
    assert ptq["batchnorm_left"] == 0  # every BatchNorm folded into its convolution
    assert ptq["float_layers"] == []  # every conv and the linear quantized
    by = ptq["bytes_by_dtype"]
    # the weights ship as int8: a quarter of the float weight bytes, plus scales and biases
    conv_fc_weights = sum(p.numel() for n, p in _student(run).named_parameters() if n.endswith("weight") and p.dim() > 1)
    assert by["int8"] == conv_fc_weights
    # reloading the saved state rebuilds the same int8 model: its accuracy is recomputed exactly
    q, info = load_int8(run, "ptq")
    test = _test(run)
    with torch.no_grad():
        acc = float((q(test.x).argmax(1) == test.y).float().mean())
    assert acc == pytest.approx(t["acc_int8"], abs=1e-9)
    assert json.loads((run / "int8" / "ptq" / "quantize.json").read_text())["test"] == t


def _student(run):
    from kdistill.runs import load_saved

    return load_saved(run, "student")[0]


def _test(run):
    from kdistill.config import load_config
    from kdistill.runs import prepare_data

    return prepare_data(load_config(run / "config.yaml")).test


def test_qad_loss_is_qat_at_alpha_zero_and_adds_the_teacher_term():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(16, 5, generator=g), torch.randn(16, 5, generator=g)
    y = torch.randint(0, 5, (16,), generator=g)
    assert torch.equal(qad_loss(s, y, None, 0.0, 4.0), hard_label_ce(s, y))
    assert torch.equal(qad_loss(s, y, t, 0.0, 4.0), hard_label_ce(s, y))  # the teacher is ignored
    mixed = qad_loss(s, y, t, 0.7, 2.0)
    assert mixed == pytest.approx(float(0.7 * kd_loss(s, t, 2.0) + 0.3 * hard_label_ce(s, y)), rel=1e-6)
    assert qad_loss(s, y, s, 1.0, 2.0) == pytest.approx(0.0, abs=1e-6)  # KD to itself is zero
    with pytest.raises(ValueError):
        qad_loss(s, y, None, 0.5, 4.0)


def test_gradient_flows_through_fake_quant_and_depends_on_the_teacher(run):
    student = _student(run)
    x = _test(run).x[:32]
    prepared = prepare(student, x, qat=True)
    set_mode(prepared, False)
    with torch.no_grad():
        prepared(x)  # ranges
    y = torch.zeros(32, dtype=torch.long)
    grads = []
    for t_logits in (torch.zeros(32, 4), torch.randn(32, 4, generator=torch.Generator().manual_seed(0)) * 5):
        prepared.zero_grad()
        qad_loss(prepared(x), y, t_logits, 0.9, 4.0).backward()
        w = dict(prepared.named_parameters())["stage1.conv1.weight"].grad
        assert w is not None and torch.isfinite(w).all() and w.abs().sum() > 0
        grads.append(w.clone())
    assert not torch.allclose(grads[0], grads[1])  # the teacher term reaches the weights


def test_qad_lowers_the_kd_loss_to_the_teacher(run, ptq):
    qad = quantize_run(run, "qad", calib=128, epochs=2, lr=5e-3, onnx=False, log=lambda s: None)
    assert qad["alpha"] == 0.9 and qad["teacher"] == "run teacher" and qad["qat_graph"]
    assert len(qad["history"]) == 2 and qad["history"][1]["loss"] < qad["history"][0]["loss"]
    assert qad["batchnorm_left"] == 0  # QAT's simulated conv-BN fold is folded at conversion
    # the KD loss (at the run's T = 4) of the int8 student to the teacher, on the test set
    assert qad["temperature"] == 4.0
    assert qad["test"]["kd_int8_teacher"] < ptq["test"]["kd_int8_teacher"]
    assert ptq["test"]["kd_float_teacher"] == pytest.approx(qad["test"]["kd_float_teacher"])  # same float student
    assert qad["test"]["agreement_int8_teacher"] >= ptq["test"]["agreement_int8_teacher"] - 0.02


class _Conv3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Conv3d(1, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.body(x.unsqueeze(1)).mean((2, 3, 4)))


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.export cannot capture it
            return self.fc(x.flatten(1))
        return -self.fc(x.flatten(1))


def _data(shape=(1, 8, 8), n=64, classes=3):
    from kdistill.data import ArrayDataset

    g = torch.Generator().manual_seed(0)
    return ArrayDataset(torch.randn((n, *shape), generator=g), torch.randint(0, classes, (n,), generator=g), classes, "t")


def test_bad_inputs_give_one_clear_message(run, tmp_path):
    data = _data()
    with pytest.raises(QuantizeError, match="too few.*at least 32"):
        quantize_model(nn.Linear(4, 2), data, "ptq", calib=8)
    with pytest.raises(QuantizeError, match="has only 64"):
        quantize_model(nn.Linear(4, 2), data, "ptq", calib=100)
    with pytest.raises(QuantizeError, match="Unknown quantization method 'int4'"):
        quantize_model(nn.Linear(4, 2), data, "int4", calib=32)
    with pytest.raises(QuantizeError, match="needs its training data"):
        quantize(nn.Linear(4, 2), None)
    with pytest.raises(QuantizeError, match="cannot be captured by torch.export"):
        quantize(_Branchy(), data, calib=32)
    # an operator the x86 quantizer cannot quantize is named with its layer ...
    d3 = _data((4, 4, 4))
    with pytest.raises(QuantizeError, match=r"conv3d in 'body'.*--allow-float"):
        quantize(_Conv3d(), d3, calib=32)
    # ... and runs in float, alone, when allowed
    q = quantize(_Conv3d(), d3, calib=32, allow_float=True)
    assert q.info["float_layers"] == [["conv3d", "body"]]
    assert float_layers(q.int8) == [("conv3d", "body")]
    # a run folder without a float student
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QuantizeError, match="Nothing to quantize.*no model.safetensors"):
        quantize_run(empty, "ptq")
    # QAD on a run without a teacher, and an int8 TorchScript export
    (tmp_path / "noteacher").mkdir()
    for f in ("model.safetensors", "model.json", "config.yaml"):
        (tmp_path / "noteacher" / f).write_bytes((run / f).read_bytes())
    with pytest.raises(QuantizeError, match="no float teacher.*--teacher student"):
        quantize_run(tmp_path / "noteacher", "qad", calib=64)
    with pytest.raises(QuantizeError, match="ONNX only"):
        quantize.export_int8(run, "ptq", format="torchscript")
    with pytest.raises(QuantizeError, match="no qat int8 student"):
        load_int8(run, "qat")


@pytest.mark.slow
def test_cli_quantize_export_profile_int8_onnx(run, ptq, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from kdistill.cli import main

    assert main(["quantize", str(run), "--method", "ptq", "--calib", "128", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    o = res["onnx"]
    assert o["ops"].get("QuantizeLinear", 0) > 0 and o["ops"].get("DequantizeLinear", 0) > 0
    assert "BatchNormalization" not in o["ops"]
    assert o["size_ratio"] >= 3.0, o  # int8 weights: at least 3x smaller than the float ONNX file
    assert o["parity_int8_pytorch"]["passed"] and o["parity_int8_pytorch"]["top1_agreement"] >= 0.99
    assert main(["export", str(run), "--int8", "ptq", "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert entry["passed"] and entry["parity"]["top1_agreement"] >= 0.99
    assert entry["parity"]["acc_int8_pytorch"] == pytest.approx(ptq["test"]["acc_int8"])
    assert json.loads((run / "export.json").read_text())["onnx-int8-ptq"]["passed"]
    assert main(["export", str(run), "--int8", "ptq", "--format", "torchscript"]) == 2
    assert "ONNX only" in capsys.readouterr().err
    assert main(["profile", str(run), "--int8", "--repeats", "3", "--warmup", "1", "--json"]) == 0
    prof = json.loads(capsys.readouterr().out)
    names = [m["name"] for m in prof["models"]]
    assert names[:2] == ["teacher (float)", "student (float)"] and "student int8 ptq" in names
    sizes = {m["name"]: m["file_bytes"] for m in prof["models"]}
    assert sizes["student int8 ptq"] * 3 <= sizes["student (float)"]
