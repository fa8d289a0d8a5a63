"""``teacher.input: auto``: the teacher's input format from its own card (timm's
pretrained_cfg, a weights file's JSON sidecar, an hf: folder's preprocessor_config.json),
and the interpolation and centre crop it brings. timm does not import on the main lane: a
stand-in with timm's ``create_model`` / ``get_pretrained_cfg`` signatures is used here; the
real timm runs in tests/test_zoo.py."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdistill.config import validate_config
from kdistill.errors import ConfigError
from kdistill.runs import preflight, run_experiment
from kdistill.teacher_input import InputSpec, card_spec, convert

CARD = {"input_size": [3, 12, 12], "interpolation": "bicubic", "crop_pct": 0.75,
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "classifier": "3"}


def test_centre_crop_is_timms_evaluation_transform():
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8) / 128
    # size 4 at crop_pct 0.5: the shorter side to floor(4 / 0.5) = 8 (this image's own), then the centre 4x4
    out = convert(x, InputSpec.make(size=4, crop_pct=0.5, interpolation="nearest"))
    assert torch.equal(out, x[..., 2:6, 2:6])
    # a wide image keeps its aspect ratio: 8x16 -> 6x12 -> the centre 3x3 (offsets rounded as torchvision's)
    wide = torch.rand(1, 1, 8, 16)
    got = convert(wide, InputSpec.make(size=3, crop_pct=0.5, interpolation="bicubic"))
    big = F.interpolate(wide, size=(6, 12), mode="bicubic", align_corners=False, antialias=True)
    assert torch.allclose(got, big[..., 2:5, 4:7], atol=1e-6)
    # no crop: straight to the size, the interpolation the card names
    plain = convert(wide, InputSpec.make(size=[4, 4], interpolation="bicubic"))
    assert torch.allclose(plain, F.interpolate(wide, size=(4, 4), mode="bicubic", antialias=True), atol=1e-6)
    with pytest.raises(ConfigError, match="interpolation"):
        InputSpec.make(interpolation="lanczos")


def test_hf_processor_configs_written_by_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    cases = {
        # ConvNeXt: shortest edge 224 with crop_pct 0.875 (below 384, so cropped)
        "convnext": (transformers.ConvNextImageProcessor(size={"shortest_edge": 224}), [224, 224], 0.875, "bicubic"),
        # ViT: straight to 224x224, bilinear, no crop
        "vit": (transformers.ViTImageProcessor(), [224, 224], None, "bilinear"),
        # CLIP: shortest edge 256, centre crop 224 -> the crop keeps 224/256
        "clip": (transformers.CLIPImageProcessor(size={"shortest_edge": 256}), [224, 224], 224 / 256, "bicubic"),
    }
    for name, (proc, size, crop, mode) in cases.items():
        folder = tmp_path / name
        proc.save_pretrained(folder)
        (folder / "config.json").write_text(json.dumps({"num_channels": 3}))
        spec = card_spec(f"hf:{folder}")
        assert spec["size"] == size and spec["interpolation"] == mode and spec["channels"] == 3, name
        assert spec["crop_pct"] == (pytest.approx(crop) if crop else None), name
        assert spec["mean"] == list(proc.image_mean) and spec["std"] == list(proc.image_std)
        assert spec["source"].endswith("preprocessor_config.json")


@pytest.fixture
def stand_in_timm(monkeypatch):
    """timm's create_model and get_pretrained_cfg, with a card for the name ``tiny``."""

    def create(name, pretrained=False, num_classes=1000, in_chans=3, **kw):
        return nn.Sequential(nn.Conv2d(in_chans, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

    def get_pretrained_cfg(name):
        return types.SimpleNamespace(to_dict=lambda: dict(CARD)) if name == "tiny" else None

    mod = types.SimpleNamespace(create_model=create, get_pretrained_cfg=get_pretrained_cfg)
    monkeypatch.setitem(sys.modules, "timm", mod)
    return create


def test_timm_card_from_the_registry_and_from_a_sidecar(tmp_path, stand_in_timm):
    spec = card_spec("timm:tiny")
    assert spec["size"] == [12, 12] and spec["channels"] == 3 and spec["crop_pct"] == 0.75
    assert spec["interpolation"] == "bicubic" and spec["source"] == "timm pretrained_cfg of tiny"
    assert card_spec("timm:tiny", kwargs={"img_size": 32})["size"] == [32, 32]  # the network is built for it
    with pytest.raises(ConfigError, match="no pretrained_cfg"):
        card_spec("timm:unknown")
    # the weights file's own card wins: NAME.json beside it, or timm's hub config.json
    (tmp_path / "w.safetensors").write_bytes(b"")
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "tiny", "pretrained_cfg": {**CARD, "crop_pct": 1.0}}))
    assert card_spec("timm:tiny", str(tmp_path / "w.safetensors"))["crop_pct"] == 1.0
    (tmp_path / "w.json").write_text(json.dumps({**CARD, "input_size": [3, 10, 10]}))
    side = card_spec("timm:tiny", str(tmp_path / "w.safetensors"))
    assert side["size"] == [10, 10] and side["source"] == str(tmp_path / "w.json")
    with pytest.raises(ConfigError, match="model's card"):
        card_spec("mlp")


def _cfg(tmp_path, teacher):
    return validate_config({
        "data": {"name": "synthetic", "options": {"num_classes": 4, "input_shape": [1, 8, 8], "n_train": 64,
                                                  "n_test": 32}, "batch_size": 32},
        "teacher": teacher, "student": {"model": "mlp", "kwargs": {"hidden": [8]}}, "method": {"name": "kd"},
        "train": {"epochs": 1, "lr": 0.01, "progress": False}, "output": {"dir": str(tmp_path / "runs")}})


def test_a_run_with_teacher_input_auto_applies_and_logs_the_card(tmp_path, stand_in_timm):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    trained = stand_in_timm("tiny", num_classes=4, in_chans=3)
    save_file({f"module.{k}": v for k, v in trained.state_dict().items()}, str(tmp_path / "w.safetensors"))
    (tmp_path / "w.json").write_text(json.dumps({"pretrained_cfg": CARD}))
    teacher = {"model": "timm:tiny", "checkpoint": str(tmp_path / "w.safetensors"), "input": "auto"}
    lines = []
    res = run_experiment(_cfg(tmp_path, teacher), run_dir=tmp_path / "run", log=lines.append)
    applied = res["teacher"]["input"]
    assert applied["size"] == [12, 12] and applied["channels"] == 3 and applied["crop_pct"] == 0.75
    assert applied["interpolation"] == "bicubic" and applied["source"] == str(tmp_path / "w.json")
    line = next(s for s in lines if s.startswith("Teacher input:"))
    assert "size 12x12 (bicubic, centre crop of 0.75)" in line and "w.json" in line
    # the teacher sees the grey 8x8 images as the card says: 3 channels, 16 -> centre 12, ImageNet's mean/std
    spec = InputSpec.make(**{k: v for k, v in applied.items() if k != "net_input_shape"})
    x = torch.rand(2, 1, 8, 8)
    want = F.interpolate(x.expand(-1, 3, -1, -1), size=(16, 16), mode="bicubic", antialias=True)[..., 2:14, 2:14]
    want = (want - torch.tensor(CARD["mean"]).view(1, 3, 1, 1)) / torch.tensor(CARD["std"]).view(1, 3, 1, 1)
    assert torch.allclose(convert(x, spec), want, atol=1e-5)
    # an explicit key beside auto wins over the card
    teacher["input"] = {"auto": True, "crop_pct": 1.0, "interpolation": "bilinear"}
    res = run_experiment(_cfg(tmp_path, teacher), run_dir=tmp_path / "run2", log=lambda s: None)
    assert res["teacher"]["input"]["crop_pct"] == 1.0 and res["teacher"]["input"]["interpolation"] == "bilinear"
    assert res["teacher"]["input"]["mean"] == CARD["mean"]


def test_auto_without_a_card_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="teacher.input: auto"):
        preflight(_cfg(tmp_path, {"model": "mlp", "checkpoint": str(tmp_path / "t.safetensors"), "input": "auto"}))
    with pytest.raises(ConfigError, match="input"):
        _cfg(tmp_path, {"model": "mlp", "input": "automatic"})


def test_the_timm_example_configs_validate():
    from pathlib import Path

    from kdistill.config import load_config

    examples = Path(__file__).resolve().parents[1] / "examples"
    teacher = load_config(examples / "timm_teacher.yaml")
    distill = load_config(examples / "timm_distill.yaml")
    assert teacher.student.model == "timm:resnet18" and distill.teacher.model == teacher.student.model
    assert distill.teacher.input.auto and distill.teacher.checkpoint == "weights/model.safetensors"
