"""Issue 26: a run's input contract and class names travel with every artifact, and
`kdistill predict` answers for image files from a run folder or an ONNX file alone."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_image_sources import make_images, write_folder

from kdistill.cli import main
from kdistill.config import load_config, validate_config
from kdistill.data.images import load_images
from kdistill.errors import ConfigError, DataError
from kdistill.export import export_run
from kdistill.predict import predict_files
from kdistill.runs import load_saved, prepare_data, run_experiment

NAMES = ("ant", "bee", "cat")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(root: Path, **data) -> dict:
    return {"data": {"name": "imagefolder", "root": str(root), "workers": 0, "batch_size": 8, "eval_batch_size": 8,
                     "options": {"size": 12, "resize": 14, "mean": "auto"}, **data},
            "student": {"model": "convnet", "kwargs": {}}, "method": {"name": "ce"},
            "train": {"epochs": 2, "progress": False, "device": "cpu", "lr": 3e-3}}


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("ship")
    x, y = make_images((12, 12, 12), hw=(16, 20))
    xt, yt = make_images((3, 3, 3), hw=(18, 15), seed=1)
    write_folder(tmp / "photos", x, y, "train", ext="jpg", names=NAMES)
    write_folder(tmp / "photos", xt, yt, "test", ext="png", names=NAMES)
    run_experiment(validate_config(_cfg(tmp / "photos")), tmp / "run", log=lambda s: None)
    return tmp / "run", tmp / "photos"


def test_run_records_measured_contract_and_folder_names(photo_run):
    run, photos = photo_run
    record = json.loads((run / "model.json").read_text())
    test = prepare_data(load_config(run / "config.yaml")).test
    c = record["preprocess"]
    assert record["class_names"] == list(NAMES)
    assert (c["kind"], c["channels"], c["channel_order"], c["resize"], c["size"]) == ("image", 3, "RGB", 14, 12)
    # mean: auto is recorded as the measured numbers, the ones the test split normalises with
    assert c["mean"] == test.mean.tolist() and c["std"] == test.std.tolist()
    assert all(0.05 < m < 0.95 for m in c["mean"]) and c["mean"] != [0.5, 0.5, 0.5]


def test_same_file_same_tensor_and_logits_as_the_test_split(photo_run):
    run, _ = photo_run
    test = prepare_data(load_config(run / "config.yaml")).test
    model, record = load_saved(run)
    files = [Path(test.reader.root) / test.reader.files[r] for r in test.rows]
    via_split = test.take(torch.arange(len(test)))["x"]
    via_predict = load_images(files, record["preprocess"])
    assert torch.equal(via_split, via_predict)
    with torch.no_grad():
        assert torch.equal(model(via_split), model(via_predict))
    rows = predict_files(run, files, top_k=3)["rows"]
    probs = torch.softmax(model(via_split).detach(), 1)
    top1 = [r for r in rows if r["rank"] == 1]
    assert [r["label"] for r in top1] == probs.argmax(1).tolist()
    assert [r["class"] for r in top1] == [NAMES[k] for k in probs.argmax(1).tolist()]
    np.testing.assert_allclose([r["probability"] for r in top1], probs.max(1).values.numpy(), rtol=1e-5)
    # ranks are 1..3 with falling probabilities, summing to 1 over the three classes
    first = [r["probability"] for r in rows[:3]]
    assert [r["rank"] for r in rows[:3]] == [1, 2, 3] and first == sorted(first, reverse=True)
    assert abs(sum(first) - 1.0) < 1e-5


def test_onnx_alone_in_a_folder_gives_the_run_folders_top1(photo_run, tmp_path):
    run, photos = photo_run
    entry = export_run(run, "onnx", out=tmp_path / "exp" / "model.onnx")
    assert entry["class_names"] == list(NAMES) and entry["preprocess"]["size"] == 12
    assert {"kdistill.preprocess", "kdistill.class_names"} <= set(entry["metadata_props"])
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(entry["path"], alone / "model.onnx")
    assert [p.name for p in alone.iterdir()] == ["model.onnx"]
    from_run = predict_files(run, [photos / "test"])
    from_onnx = predict_files(alone / "model.onnx", [photos / "test"], out=tmp_path / "preds.csv")
    assert from_onnx["backend"] == "onnxruntime"
    assert [(r["file"], r["class"]) for r in from_onnx["rows"]] == [(r["file"], r["class"]) for r in from_run["rows"]]
    np.testing.assert_allclose([r["probability"] for r in from_onnx["rows"]],
                               [r["probability"] for r in from_run["rows"]], atol=1e-4)
    with open(tmp_path / "preds.csv") as f:
        got = list(csv.DictReader(f))
    assert len(got) == 9 and got[0]["class"] == from_run["rows"][0]["class"] and set(got[0]) == {
        "file", "rank", "label", "class", "probability"}


def test_cli_predict_prints_names_and_refuses_bad_input(photo_run, tmp_path, capsys):
    run, photos = photo_run
    assert main(["predict", str(run), str(photos / "test" / "bee"), "--top-k", "2",
                 "--out", str(tmp_path / "p.csv")]) == 0
    printed = capsys.readouterr().out
    assert "bee" in printed and "6 image(s)" not in printed and "3 image(s), pytorch" in printed
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 1 + 3 * 2
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    assert main(["predict", str(run), str(tmp_path / "broken.jpg")]) != 0
    err = capsys.readouterr()
    assert "broken.jpg" in err.out + err.err and "Traceback" not in err.out + err.err
    assert main(["predict", str(run), str(tmp_path / "nothing")]) != 0


def test_class_names_option_overrides_and_is_checked(photo_run, tmp_path):
    _, photos = photo_run
    cfg = _cfg(photos, class_names=["formica", "apis", "felis"])
    cfg["train"]["epochs"] = 0
    data = prepare_data(validate_config(cfg))
    assert data.train.class_names == data.test.class_names == ["formica", "apis", "felis"]
    with pytest.raises(ConfigError, match="2 name.*3 classes"):
        prepare_data(validate_config(_cfg(photos, class_names=["a", "b"])))


def test_array_contract_is_refused_for_images(tmp_path):
    from kdistill.data.contract import check_image_contract

    with pytest.raises(DataError, match="no image input contract"):
        check_image_contract({"kind": "array", "mean": [0.0]}, "x.onnx")
    with pytest.raises(DataError, match="inconsistent"):
        check_image_contract({"kind": "image", "channels": 3, "resize": 8, "size": 12, "mean": [0] * 3,
                              "std": [1] * 3}, "x.onnx")


def test_predict_on_the_int8_onnx_uses_the_same_metadata(photo_run):
    pytest.importorskip("torchao")
    from kdistill.quantize import quantize_run

    run, photos = photo_run
    res = quantize_run(run, "ptq", log=lambda s: None)
    assert res["calib"] == 36  # every training image: fewer than 512
    path = Path(res["onnx"]["path"])
    rows = predict_files(path, [photos / "test"])["rows"]
    ref = predict_files(run, [photos / "test"])["rows"]
    assert len(rows) == 9 and {r["class"] for r in rows} <= set(NAMES)
    agree = np.mean([a["class"] == b["class"] for a, b in zip(rows, ref)])
    # the int8 ONNX passed its parity check (all 9 agree with int8 PyTorch), so its agreement with the
    # float run folder on these files is int8 PyTorch's agreement with float on the test split
    assert res["onnx"]["parity_int8_pytorch"]["top1_agreement"] == 1.0
    assert agree == pytest.approx(res["test"]["agreement_int8_float"])


def test_report_and_demo_mark_latency_measured_on_a_busy_machine(tmp_path):
    from rich.console import Console
    from test_report import write_run

    from kdistill.demo import print_demo_table
    from kdistill.report.tables import aggregate_dir, table_rows

    for seed, busy in ((0, False), (1, True)):
        d = write_run(tmp_path, f"kd-s{seed}", seed, 0.8, 0.8)
        res = json.loads((d / "results.json").read_text())
        res["student"]["latency_ms_cpu_b1"]["busy"] = busy
        (d / "results.json").write_text(json.dumps(res))
    cells = {r[0].split(" [")[0]: r[-1] for r in table_rows(aggregate_dir(tmp_path))}
    assert cells["kd"].endswith("(busy)") and not cells["teacher"].endswith("(busy)")
    row = {"test_acc": 0.5, "agreement": None, "params": 10, "ece": 0.1, "latency_ms": 192.0}
    from kdistill import demo

    result = {"seed": 0, "wall_time_s": 1.0, "run_dir": "x",
              "runs": {n: dict(row, latency_busy=i == 0) for i, n in enumerate(demo.STAGES)}}
    console = Console(record=True, width=140)
    print_demo_table(result, console)
    text = console.export_text()
    assert text.count("192.000 (busy)") == 1 and "not comparable" in text


def test_baked_onnx_takes_pixels_and_gives_the_run_folders_answers(photo_run, tmp_path):
    run, photos = photo_run
    path = tmp_path / "baked" / "model.onnx"
    assert main(["export", str(run), "--bake-preprocess", "--out", str(path)]) == 0
    entry = json.loads((run / "export.json").read_text())["onnx-baked"]
    assert entry["passed"] and entry["parity"]["max_abs_diff"] < 1e-4  # probabilities against PyTorch's softmax
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:], out.name) == ("image", "tensor(uint8)", [14, 14, 3], "probs")
    baked = predict_files(path, [photos / "test"], top_k=2)
    ref = predict_files(run, [photos / "test"], top_k=2)
    assert "baked" in baked["backend"]
    assert [(r["file"], r["class"]) for r in baked["rows"]] == [(r["file"], r["class"]) for r in ref["rows"]]
    np.testing.assert_allclose([r["probability"] for r in baked["rows"]], [r["probability"] for r in ref["rows"]],
                               atol=1e-4)
    # an array run has no image contract to bake
    assert main(["export", str(run), "--bake-preprocess", "--format", "torchscript"]) == ConfigError.exit_code
