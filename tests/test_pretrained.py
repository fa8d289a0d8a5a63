"""Pretrained teachers: reuse at another normalisation and resolution, hf: classifiers from a
local folder, timm: models with a local weights file (through a stand-in: timm does not
import on this machine), and the teacher's run folder."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdistill.config import validate_config
from kdistill.data import load_dataset
from kdistill.errors import CheckpointError, ShapeError
from kdistill.evaluate import evaluate_run
from kdistill.models import create_model
from kdistill.runs import build_model, preflight, run_experiment
from kdistill.teacher_input import InputSpec, TeacherInput, convert


def test_convert_undoes_and_redoes_normalisation_exactly():
    torch.manual_seed(0)
    raw = torch.rand(3, 1, 8, 8)
    data = (raw - 0.3) / 0.2
    spec = InputSpec.make(mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3], channels=3, data_mean=0.3, data_std=0.2)
    out = convert(data, spec)
    want = (raw.expand(-1, 3, -1, -1) - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor(
        [0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    assert torch.allclose(out, want, atol=1e-5)
    resized = convert(data, InputSpec.make(size=16, data_mean=0.3, data_std=0.2))
    assert resized.shape == (3, 1, 16, 16)
    assert torch.allclose(resized, F.interpolate(raw, size=(16, 16), mode="bilinear", antialias=True), atol=1e-5)


def _image_npz(tmp_path):
    """The same synthetic images twice: raw at 16x16 (the teacher's run) and, for the
    student's run, average-pooled to 8x8 and standardised with mean 0.5, std 2."""
    s = load_dataset("synthetic", num_classes=4, input_shape=[1, 16, 16], n_train=384, n_test=256, noise=1.5)
    big = {"x_train": s.train.x.numpy(), "y_train": s.train.y.numpy(), "x_test": s.test.x.numpy(),
           "y_test": s.test.y.numpy()}
    np.savez(tmp_path / "big.npz", **big)
    small = dict(big)
    for k in ("x_train", "x_test"):
        small[k] = ((F.avg_pool2d(torch.from_numpy(big[k]), 2) - 0.5) / 2.0).numpy()
    np.savez(tmp_path / "small.npz", **small)


def _cfg(tmp_path, data, **over):
    cfg = {"data": {"name": "npz", "options": {"path": str(tmp_path / data), "num_classes": 4}, "batch_size": 64},
           "teacher": {"model": "mlp", "kwargs": {"hidden": [64]}, "train": {"epochs": 3}},
           "student": {"model": "mlp", "kwargs": {"hidden": [16]}},
           "method": {"name": "kd"}, "train": {"epochs": 1, "lr": 0.01, "progress": False},
           "output": {"dir": str(tmp_path / "runs")}}
    cfg.update(over)
    return validate_config(cfg)


def test_teacher_reused_at_another_normalisation_and_resolution(tmp_path):
    _image_npz(tmp_path)
    first = run_experiment(_cfg(tmp_path, "big.npz"), run_dir=tmp_path / "first")
    t_acc = first["teacher"]["metrics"]["test"]["acc"]
    assert t_acc > 0.8
    # the teacher's folder is a run folder of its own: eval rebuilds it from its config.yaml
    assert (tmp_path / "first" / "teacher" / "config.yaml").is_file()
    assert evaluate_run(tmp_path / "first" / "teacher")["student"]["acc"] == pytest.approx(t_acc)
    ckpt = str(tmp_path / "first" / "teacher" / "model.safetensors")
    teacher = {"model": "mlp", "kwargs": {"hidden": [64]}, "checkpoint": ckpt}
    # without its input format, the 16x16 teacher cannot take the 8x8 batches: refused up front
    with pytest.raises(CheckpointError, match="another shape"):
        preflight(_cfg(tmp_path, "small.npz", teacher=teacher))
    teacher["input"] = {"size": 16, "data_mean": [0.5], "data_std": [2.0]}
    second = run_experiment(_cfg(tmp_path, "small.npz", teacher=teacher), run_dir=tmp_path / "second")
    # the teacher sees the small images brought back to its own scale and size: a blurred
    # copy of what it learnt on, so it keeps most of its accuracy (chance is 0.25)
    assert second["teacher"]["metrics"]["test"]["acc"] > t_acc - 0.15
    assert second["teacher"]["input"]["size"] == [16, 16]


def test_hf_classifier_from_a_tiny_local_config(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                    num_labels=4, layer_type="basic")
    torch.manual_seed(0)
    hf = transformers.ResNetForImageClassification(cfg).eval()
    hf.save_pretrained(tmp_path / "hfnet")
    name = f"hf:{tmp_path / 'hfnet'}"
    net = create_model(name, 4, (1, 16, 16)).eval()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(net(x), hf(pixel_values=x).logits, atol=1e-6)
    data = load_dataset("synthetic", num_classes=3, input_shape=[1, 16, 16], n_train=16, n_test=8)
    with pytest.raises(ShapeError, match="3 classes"):
        build_model(name, {}, data, what="teacher")
    assert build_model(name, {"new_head": True}, data, what="teacher")(x).shape == (3, 3)
    # the folder's own weights as the checkpoint ("used as is"): keys gain the wrapper's prefix
    lines = []
    data4 = load_dataset("synthetic", num_classes=4, input_shape=[1, 16, 16], n_train=16, n_test=8)
    again = build_model(name, {}, data4, str(tmp_path / "hfnet"), what="teacher", log=lines.append).eval()
    assert torch.allclose(again(x), net(x), atol=1e-6) and "+model." in lines[0]


def test_timm_teacher_from_a_local_weights_file_through_a_stand_in(tmp_path, monkeypatch):
    """timm does not import here (it needs torchvision); a stand-in module with timm's
    create_model signature checks what kdistill does around it."""
    calls = []

    def create(name, pretrained=False, num_classes=1000, in_chans=3, **kw):
        calls.append((name, pretrained, num_classes, in_chans))
        return nn.Sequential(nn.Conv2d(in_chans, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create))
    torch.manual_seed(1)
    trained = create("x", num_classes=4, in_chans=3)
    from safetensors.torch import save_file

    save_file({f"module.{k}": v for k, v in trained.state_dict().items()}, str(tmp_path / "w.safetensors"))
    data = load_dataset("synthetic", num_classes=4, input_shape=[1, 8, 8], n_train=16, n_test=8)
    spec = InputSpec.make(channels=3, size=12, mean=[0.5] * 3, std=[0.25] * 3)
    from kdistill.teacher_input import Adapter

    net = build_model("timm:tiny", {}, data, str(tmp_path / "w.safetensors"), what="teacher", adapt=Adapter(spec))
    assert calls[-1] == ("tiny", False, 4, 3)  # never downloads; built for the teacher's channels
    assert isinstance(net, TeacherInput)
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), net.net.state_dict().values()))
    x = data.train.example(2)
    with torch.no_grad():
        assert torch.allclose(net(x), trained(convert(x, spec)))
