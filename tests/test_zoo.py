"""The vision lane (``pytest -m zoo``, run by .ci/zoo in a venv with torch 2.14.1,
torchvision 0.29.1 and timm): real ``timm.create_model`` and ``torchvision.models`` networks,
never downloaded (``pretrained=False``; weights come from local files). The main lane's
torch has no working torchvision, so there these tests skip.

Everything runs at toy size on the CPU: 32x32 images, a few dozen samples, one epoch.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

try:  # torchvision from PyPI fails on import beside a torch it was not built for
    import timm
    import torchvision
except Exception as e:  # noqa: BLE001 - any failure means: not the vision lane
    pytest.skip(f"timm/torchvision do not import here ({type(e).__name__}); the vision lane (.ci/zoo) runs these",
                allow_module_level=True)

from kdistill.config import validate_config
from kdistill.data import load_dataset
from kdistill.methods import create
from kdistill.models import create_model, default_taps
from kdistill.runs import build_model, run_experiment
from kdistill.taps import probe
from kdistill.teacher_input import TeacherInput

pytestmark = pytest.mark.zoo


def _data(c=3, side=32, k=4, n=16):
    return load_dataset("synthetic", num_classes=k, input_shape=[c, side, side], n_train=n, n_test=8)


@pytest.mark.parametrize("name, cls", [("timm:resnet18", "ResNet"), ("timm:mobilenetv3_small_100", "MobileNetV3"),
                                       ("torchvision:resnet18", "ResNet"),
                                       ("torchvision:mobilenet_v3_small", "MobileNetV3")])
def test_real_zoo_models_are_built_without_weights_and_run_on_32px(name, cls):
    torch.manual_seed(0)
    net = create_model(name, 5, (3, 32, 32)).eval()
    assert type(net).__name__ == cls and type(net).__module__.startswith(name.split(":")[0])
    with torch.no_grad():
        out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    torch.manual_seed(0)  # pretrained=False, weights=None: the same seed gives the same random init
    again = create_model(name, 5, (3, 32, 32))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))


def _save(state, path, fmt):
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
@pytest.mark.parametrize("prefix", ["", "module.", "model."])
def test_timm_weights_round_trip_through_a_local_file(tmp_path, fmt, prefix):
    torch.manual_seed(3)
    trained = timm.create_model("resnet18", pretrained=False, num_classes=4).eval()
    path = tmp_path / f"w.{fmt}"
    _save({prefix + k: v for k, v in trained.state_dict().items()}, path, fmt)
    data = _data()
    lines = []
    torch.manual_seed(99)  # another init: only the file can make the two agree
    net = build_model("timm:resnet18", {}, data, str(path), what="teacher", log=lines.append).eval()
    x = data.train.example(4)
    with torch.no_grad():
        assert torch.equal(net(x), trained(x))
    assert ("prefixes mapped" in lines[0]) == bool(prefix)


def test_torchvision_weights_round_trip_with_a_ddp_prefix(tmp_path):
    torch.manual_seed(4)
    trained = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    _save({"module." + k: v for k, v in trained.state_dict().items()}, tmp_path / "w.safetensors", "safetensors")
    data = _data()
    net = build_model("torchvision:resnet18", {}, data, str(tmp_path / "w.safetensors"), what="teacher").eval()
    x = data.train.example(4)
    with torch.no_grad():
        assert torch.equal(net(x), trained(x))


@pytest.mark.parametrize("name", ["timm:resnet18", "timm:mobilenetv3_small_100"])
def test_taps_come_from_feature_info_and_match_the_shapes_it_declares(name):
    net = create_model(name, 4, (3, 64, 64))
    taps = default_taps(net)
    info = net.feature_info
    assert taps["stages"] == [f["module"] for f in info] and len(taps["stages"]) == 5
    shapes = probe(net, taps["stages"] + [taps["embedding"]], torch.randn(2, 3, 64, 64))
    for f in taps["feature_info"]:  # channels and reduction as timm declares them, checked by one forward
        assert shapes[f["tap"]] == (2, f["channels"], 64 // f["reduction"], 64 // f["reduction"])
    assert shapes[taps["embedding"]] == (2, net.num_features if name.endswith("18") else net.head_hidden_size)


def test_a_feature_method_pairs_timm_stages_without_naming_layers():
    torch.manual_seed(0)
    teacher, student = create_model("timm:resnet18", 4, (3, 32, 32)), create_model("timm:mobilenetv3_small_100", 4,
                                                                                    (3, 32, 32))
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    d = create("at", student=student, teacher=teacher, example=x)
    term = d.terms[0]
    # attention transfer pairs the deepest stages (5 declared on each side): feature_info's modules
    assert term.student_taps[-1] == "blocks.5" and term.teacher_taps[-1] == "layer4"
    out = d({"x": x, "y": y})
    out["loss"].backward()
    assert out["loss_at"] > 0 and student.conv_stem.weight.grad.abs().sum() > 0


def _imagefolder(root, k=3, train=8, test=4, side=32):
    """PNG class folders: class c is bright in channel c (with noise), so a model can tell them."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for c in range(k):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 90, (side, side, 3), dtype=np.uint8)
                img[..., c] += 150
                Image.fromarray(img).save(root / split / f"class{c}" / f"{i}.png")


def test_timm_teacher_from_safetensors_with_its_card_distils_a_timm_student_and_exports(tmp_path):
    from safetensors.torch import save_file

    from kdistill.export import export_run

    _imagefolder(tmp_path / "images")
    torch.manual_seed(5)
    teacher = timm.create_model("resnet18", pretrained=False, num_classes=3)
    save_file({f"model.{k}": v for k, v in teacher.state_dict().items()}, str(tmp_path / "resnet18.safetensors"))
    card = timm.get_pretrained_cfg("resnet18").to_dict() | {"input_size": [3, 40, 40]}  # the real card, smaller
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "resnet18", "pretrained_cfg": card}))
    cfg = validate_config({
        "data": {"name": "imagefolder", "root": str(tmp_path / "images"), "options": {"size": 32}, "batch_size": 8},
        "teacher": {"model": "timm:resnet18", "checkpoint": str(tmp_path / "resnet18.safetensors"), "input": "auto"},
        "student": {"model": "timm:mobilenetv3_small_100"}, "method": {"name": "kd"},
        "train": {"epochs": 1, "lr": 0.01, "progress": False}, "output": {"dir": str(tmp_path / "runs")}})
    lines = []
    res = run_experiment(cfg, run_dir=tmp_path / "run", log=lines.append)
    applied = res["teacher"]["input"]
    assert applied["size"] == [40, 40] and applied["mean"] == list(card["mean"])
    assert applied["interpolation"] == card["interpolation"] and applied["crop_pct"] == card["crop_pct"]
    assert any(s.startswith("Teacher input:") and "config.json" in s for s in lines)
    assert np.isfinite(res["final"]["test"]["acc"])
    entry = export_run(tmp_path / "run", "onnx")
    assert entry["parity"]["top1_agreement"] == 1.0 and entry["parity"]["max_abs_diff"] < 1e-3


def test_timm_card_from_the_registry_drives_the_conversion():
    """No sidecar: ``teacher.input: auto`` reads timm's own pretrained_cfg for the name."""
    from kdistill.runs.build import teacher_adapter

    cfg = validate_config({"data": {"name": "synthetic"}, "teacher": {"model": "timm:mobilenetv3_small_100",
                                                                     "input": "auto"},
                           "student": {"model": "mlp"}})
    data = _data(c=1)
    adapt = teacher_adapter(cfg.teacher, data)
    want = timm.get_pretrained_cfg("mobilenetv3_small_100")
    assert adapt.spec.mean == tuple(want.mean) and adapt.spec.size == tuple(want.input_size[1:])
    assert adapt.spec.interpolation == want.interpolation and adapt.spec.crop_pct == want.crop_pct
    net = build_model("timm:mobilenetv3_small_100", {}, data, what="teacher", adapt=adapt)
    assert isinstance(net, TeacherInput) and net.net.conv_stem.in_channels == 3  # grey data, repeated
