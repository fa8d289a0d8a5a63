"""The vision lane (``pytest -m zoo``): DeiT's distillation token on real timm models,
timm's ``deit_tiny_distilled_patch16_224`` and a plain ``vit_tiny_patch16_224`` given the
token (models/vit_token.py), at 32x32 (4 patches). Skipped where timm does not import."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

try:
    import timm
    import torchvision  # noqa: F401  (timm's image helpers need it; the lane has both)
except Exception as e:  # noqa: BLE001 - any failure means: not the vision lane
    pytest.skip(f"timm/torchvision do not import here ({type(e).__name__}); the vision lane (.ci/zoo) runs these",
                allow_module_level=True)

from kdistill.config import validate_config
from kdistill.errors import ConfigError
from kdistill.methods import create
from kdistill.models import create_model
from kdistill.models.vit_token import DistillationToken
from kdistill.runs import run_experiment

pytestmark = pytest.mark.zoo


def test_the_token_on_a_plain_vit_computes_what_timms_distilled_deit_computes():
    torch.manual_seed(0)
    deit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=5, img_size=32).eval()
    ours = create_model("timm:vit_tiny_patch16_224", 5, (3, 32, 32), img_size=32, distillation_token=True).eval()
    assert isinstance(ours, DistillationToken)
    state = dict(deit.state_dict())
    pos = state.pop("pos_embed")  # timm: [cls, dist, patches]; ours: [cls, patches] + the dist token's own
    state["pos_embed"] = torch.cat([pos[:, :1], pos[:, 2:]], dim=1)
    state["dist_pos_embed"] = pos[:, 1:2]
    ours.load_state_dict(state, strict=True)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), deit(x), rtol=1e-5, atol=1e-5)
    # a plain ViT's own weights load under the same keys; only the token's three parts are new
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32)
    missing = ours.load_state_dict(vit.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["dist_pos_embed", "dist_token", "head_dist.bias", "head_dist.weight"]
    with pytest.raises(ConfigError, match="plain timm VisionTransformer"):
        create_model("timm:vit_tiny_patch16_224", 5, (3, 32, 32), img_size=32, global_pool="avg",
                     distillation_token=True)


def test_hard_distillation_on_timms_distilled_deit_reads_both_heads():
    torch.manual_seed(0)
    student = create_model("timm:deit_tiny_distilled_patch16_224", 4, (3, 32, 32), img_size=32)
    teacher = create_model("timm:resnet18", 4, (3, 32, 32)).eval()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    d = create("deit", student=student, teacher=teacher)
    d.train()
    out = d({"x": x, "y": y})
    tokens = student.forward_features(x)
    cls, dist = student.head(tokens[:, 0]), student.head_dist(tokens[:, 1])
    with torch.no_grad():
        t_arg = teacher(x).argmax(1)
    torch.testing.assert_close(out["loss_deit_cls"], 0.5 * F.cross_entropy(cls, y), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss_deit_dist"], 0.5 * F.cross_entropy(dist, t_arg), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["logits"], (cls + dist) / 2, rtol=1e-5, atol=1e-6)


def test_a_vit_with_the_token_distils_from_a_cnn_one_epoch_and_exports(tmp_path):
    from kdistill.export import export_run

    cfg = validate_config({
        "data": {"name": "synthetic", "options": {"num_classes": 4, "input_shape": [3, 32, 32], "n_train": 32,
                                                  "n_test": 16}, "batch_size": 16},
        "teacher": {"model": "timm:resnet18", "train": {"epochs": 1}},
        "student": {"model": "timm:vit_tiny_patch16_224", "kwargs": {"img_size": 32, "distillation_token": True}},
        "method": {"name": "deit", "distillation": "hard"},
        "train": {"epochs": 1, "lr": 0.001, "progress": False}, "output": {"dir": str(tmp_path / "runs")}})
    res = run_experiment(cfg, run_dir=tmp_path / "run", log=lambda s: None)
    assert res["student"]["kwargs"]["distillation_token"] is True
    entry = export_run(tmp_path / "run", "onnx")
    assert entry["parity"]["top1_agreement"] == 1.0 and entry["parity"]["max_abs_diff"] < 1e-3
