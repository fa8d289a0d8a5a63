"""Export (ONNX, TorchScript, safetensors) with parity, and batch prediction, on tiny real runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kdistill.cli import main
from kdistill.config import validate_config
from kdistill.errors import CheckpointError, ConfigError, DataError, KdistillError, ShapeError
from kdistill.export import FORMATS, ParityError, export_run, parity
from kdistill.methods import METHODS
from kdistill.models import MODELS
from kdistill.predict import predict
from kdistill.runs import load_saved as load_saved_model
from kdistill.runs import run_experiment

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

# (kwargs, input shape, ONNX exporter): small settings and 8x8 inputs (which every
# family's strides accept) keep the runs fast. The torch.export-based exporter spends
# 10-30 s of Python on a deep CNN on two busy cores, so the deep families take the legacy
# exporter here; the default (torch.export) path is covered by the other families and tests.
FAMILIES = {
    "mlp": ({"hidden": [16]}, [1, 8, 8], "auto"),
    "cnn1d": ({"channels": 8}, [1, 32], "auto"),
    "convnet": ({}, [1, 8, 8], "auto"),
    "resnet8": ({}, [3, 8, 8], "legacy"),
    "wrn_16_1": ({}, [3, 8, 8], "legacy"),
    "mobilenetv2": ({"width_mult": 0.25}, [3, 8, 8], "legacy"),
    "shufflenetv2": ({"net_size": 0.5}, [3, 8, 8], "legacy"),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # tests share two cores with other processes; several intra-op threads then spin
    # against each other and a 1 s run takes a minute
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_run(root: Path, student: str, kwargs: dict, shape: list[int], method=None, teacher=None,
             n_train: int = 32, n_test: int = 24) -> Path:
    cfg = {
        "data": {"name": "synthetic", "options": {"input_shape": shape, "n_train": n_train, "n_test": n_test},
                 "batch_size": 16, "eval_batch_size": 16},
        "student": {"model": student, "kwargs": kwargs},
        "method": method or {"name": "ce"},
        "train": {"epochs": 1, "progress": False, "device": "cpu", "lr": 1e-2},
    }
    if teacher:
        cfg["teacher"] = teacher
    run_dir = root / f"run-{student}"
    run_experiment(validate_config(cfg), run_dir, log=lambda s: None)
    return run_dir


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("mlp"), "mlp", {"hidden": [16]}, [1, 32])


def _float_initializers(path: Path) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return {k: v for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating)}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_round_trips(family, tmp_path):
    if family not in MODELS:
        pytest.skip(f"model {family!r} is not registered in this checkout")
    kwargs, shape, exporter = FAMILIES[family]
    run = make_run(tmp_path, family, kwargs, shape)
    results = json.loads((run / "results.json").read_text())
    student, _ = load_saved_model(run)
    state = student.state_dict()

    entry = export_run(run, "onnx", exporter=exporter)
    assert entry["exporter"] == ("dynamo" if exporter == "auto" else exporter)
    p = entry["parity"]
    assert p["samples"] == 24
    assert p["max_abs_diff"] < 1e-4 and p["top1_agreement"] == 1.0
    # the test set was rebuilt from config.yaml: the same accuracy training reported
    assert p["acc_pytorch"] == pytest.approx(results["final"]["test"]["acc"])
    assert json.loads((run / "export.json").read_text())["onnx"]["passed"] is True

    # dynamic batch axis, fixed sample shape
    graph = onnx.load(entry["path"]).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == shape
    # the graph carries the student's weights and nothing more (an optimiser may fold
    # BatchNorm into the convolution before it, so count elements rather than match names)
    total = sum(v.size for v in _float_initializers(Path(entry["path"])).values())
    assert 0 < total <= sum(t.numel() for t in state.values() if t.is_floating_point())

    sess = ort.InferenceSession(entry["path"], providers=["CPUExecutionProvider"])
    for b in (1, 5):
        x = torch.randn(b, *shape)
        got = sess.run(None, {"x": x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, student(x).numpy(), atol=1e-4, rtol=0)

    for fmt in ("torchscript", "safetensors"):
        e = export_run(run, fmt)
        assert e["parity"]["max_abs_diff"] < 1e-4 and e["parity"]["top1_agreement"] == 1.0
    assert set(json.loads((run / "export.json").read_text())) == set(FORMATS)


def test_legacy_exporter_and_safetensors_bundle(mlp_run, tmp_path):
    entry = export_run(mlp_run, "onnx", out=tmp_path / "legacy.onnx", exporter="legacy")
    assert entry["exporter"] == "legacy"
    assert entry["parity"]["max_abs_diff"] < 1e-4 and entry["parity"]["top1_agreement"] == 1.0

    bundle = export_run(mlp_run, "safetensors", out=tmp_path / "bundle")
    exported = load_file(str(tmp_path / "bundle" / "model.safetensors"))
    original = load_file(str(mlp_run / "model.safetensors"))
    assert exported.keys() == original.keys()
    assert all(torch.equal(exported[k], original[k]) for k in original)
    assert bundle["parity"]["max_abs_diff"] == 0.0


def test_connector_is_not_exported(tmp_path):
    if "fitnet" not in METHODS:
        pytest.skip("method 'fitnet' is not registered in this checkout")
    teacher = {"model": "mlp", "kwargs": {"hidden": [48, 48]}}
    run = make_run(tmp_path, "mlp", {"hidden": [12, 12]}, [1, 32], teacher=teacher,
                   method=[{"name": "kd"}, {"name": "fitnet"}])
    # the distiller's last checkpoint holds the connector; the shipped model must not
    ckpt = sorted((run / "checkpoints").glob("last-*"))[-1] / "model.safetensors"
    distiller_keys = set(load_file(str(ckpt)))
    method_keys = {k for k in distiller_keys if not k.startswith("student.")}
    assert method_keys, "fitnet trained no connector, so this test checks nothing"
    student_keys = {k.removeprefix("student.") for k in distiller_keys - method_keys}
    assert set(load_file(str(run / "model.safetensors"))) == student_keys

    entry = export_run(run, "onnx")
    names = {i.name for i in onnx.load(entry["path"]).graph.initializer}
    suffixes = {k.split(".", 2)[-1] for k in method_keys}  # drop "terms.<i>."
    assert not names & (method_keys | suffixes)
    assert set(_float_initializers(Path(entry["path"]))) <= student_keys
    assert entry["parity"]["top1_agreement"] == 1.0


def test_parity_numbers_by_hand():
    ref = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.5], [4.0, 0.0]])
    got = ref.clone()
    got[2] = torch.tensor([0.25, 0.5])  # flips sample 2's top-1; |diff| 0.75 there
    out = parity(ref, got, torch.tensor([0, 1, 0, -1]))
    assert out["top1_agreement"] == 0.75
    assert out["max_abs_diff"] == 0.75
    assert out["mean_abs_diff"] == pytest.approx((0.75 + 0.0) / 8)
    assert out["acc_pytorch"] == 1.0 and out["acc_exported"] == pytest.approx(2 / 3)  # label -1 ignored


def test_parity_failure_is_an_error(mlp_run, tmp_path, monkeypatch):
    import kdistill.export as ex

    real = ex.export_torchscript

    def broken(model, shape, path, example=None):
        wrong = load_saved_model(mlp_run)[0]
        with torch.no_grad():
            wrong.head.weight.mul_(-1.0)  # reverses the ranking of the logits
        real(wrong, shape, path, example)

    monkeypatch.setattr(ex, "export_torchscript", broken)
    with pytest.raises(ParityError, match="agrees with the PyTorch student on only"):
        export_run(mlp_run, "torchscript", out=tmp_path / "bad.pt")
    record = json.loads((mlp_run / "export.json").read_text())["torchscript"]
    assert record["passed"] is False and record["parity"]["top1_agreement"] < 0.999


def test_bad_inputs(mlp_run, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="onnx, torchscript, safetensors"):
        export_run(mlp_run, "tflite")
    with pytest.raises(CheckpointError, match="not a folder"):
        export_run(tmp_path / "nowhere", "onnx")
    # an interrupted run: checkpoints but no final model
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "config.yaml").write_text((mlp_run / "config.yaml").read_text())
    with pytest.raises(CheckpointError, match="no model.safetensors.*did not finish.*--resume"):
        export_run(unfinished, "onnx")
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[export\]"'):
        export_run(mlp_run, "onnx")


def test_predict_run_and_onnx(mlp_run, tmp_path):
    x = np.random.default_rng(0).standard_normal((70, 1, 32)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    res = predict(mlp_run, tmp_path / "in.npz", tmp_path / "out.npz", batch_size=32)
    assert res["samples"] == 70
    out = np.load(tmp_path / "out.npz")
    assert out["logits"].shape == (70, 4) and out["probs"].shape == (70, 4) and out["pred"].shape == (70,)
    model, _ = load_saved_model(mlp_run)
    with torch.no_grad():
        np.testing.assert_allclose(out["logits"], model(torch.from_numpy(x)).numpy(), atol=1e-6)
    np.testing.assert_allclose(out["probs"].sum(1), 1.0, atol=1e-6)
    assert (out["pred"] == out["logits"].argmax(1)).all() and out["pred"].dtype == np.int64

    onnx_path = export_run(mlp_run, "onnx", out=tmp_path / "m.onnx")["path"]
    predict(onnx_path, tmp_path / "in.npz", tmp_path / "out2.npz", batch_size=7)
    out2 = np.load(tmp_path / "out2.npz")
    np.testing.assert_allclose(out2["logits"], out["logits"], atol=1e-4)
    assert (out2["pred"] == out["pred"]).all()

    np.savez(tmp_path / "flat.npz", x=x[:, 0])
    for src in (mlp_run, onnx_path):
        with pytest.raises(ShapeError, match=r"\(70, 32\).*\(N, 1, 32\)"):
            predict(src, tmp_path / "flat.npz", tmp_path / "o.npz")
    np.savez(tmp_path / "one.npz", x=x[0])
    with pytest.raises(ShapeError, match=r"x\[None\]"):
        predict(mlp_run, tmp_path / "one.npz", tmp_path / "o.npz")
    np.savez(tmp_path / "ints.npz", x=(x > 0).astype(np.uint8))
    with pytest.raises(DataError, match="dtype uint8"):
        predict(mlp_run, tmp_path / "ints.npz", tmp_path / "o.npz")
    np.savez(tmp_path / "noX.npz", inputs=x)
    with pytest.raises(DataError, match="no array 'x'.*inputs"):
        predict(mlp_run, tmp_path / "noX.npz", tmp_path / "o.npz")
    assert not (tmp_path / "o.npz").exists()


def test_cli_export_and_predict(mlp_run, tmp_path):
    out = tmp_path / "cli.onnx"
    assert main(["export", str(mlp_run), "--format", "onnx", "--out", str(out)]) == 0
    assert out.is_file() and json.loads((mlp_run / "export.json").read_text())["onnx"]["path"] == str(out)
    assert main(["export", str(mlp_run), "--format", "tflite"]) == ConfigError.exit_code
    assert main(["export", str(tmp_path / "missing")]) == KdistillError.exit_code

    np.savez(tmp_path / "in.npz", x=np.zeros((3, 1, 32), np.float32))
    assert main(["predict", str(out), str(tmp_path / "in.npz"), "--out", str(tmp_path / "p.npz")]) == 0
    assert np.load(tmp_path / "p.npz")["logits"].shape == (3, 4)
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 5), np.float32))
    assert main(["predict", str(mlp_run), str(tmp_path / "bad.npz"), "--out", str(tmp_path / "q.npz")]) != 0
