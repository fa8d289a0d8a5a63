"""The contract every registered method keeps, checked for every name in the registry.

Each method is built with its defaults on two teacher/student pairs defined here (a plain
conv pair and a residual pair with BatchNorm, 2-D maps, different widths and depths),
then one forward and backward pass must give a finite loss, leave the frozen teacher
without gradients and in eval mode, and reach every trainable part of the method.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from kdistill.cli import main
from kdistill.methods import METHODS, create

NUM_CLASSES = 5
NUM_DATA = 24  # size of the pretend training set (CRD's memory banks)

# settings a method cannot default: the size of the training set it keeps state for
EXTRA = {"crd": {"num_data": NUM_DATA}}
# methods that need more of the student than logits and taps (DeiT's two heads) have their
# own contract tests (tests/test_deit.py); the one-head pairs here cannot carry them
GENERIC = [n for n in METHODS.names() if not getattr(METHODS.get(n), "student_contract", "")]


class TinyConv(nn.Module):
    """Three conv stages on 3x16x16 inputs (16, 8, 4 pixels), then a linear head."""

    def __init__(self, width: int, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1)
        self.act1, self.act2, self.act3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)
        self.default_taps = {"stages": ["act1", "act2", "act3"], "embedding": "fc:input"}

    def forward(self, x):
        x = self.act3(self.conv3(self.act2(self.conv2(self.act1(self.conv1(x))))))
        return self.fc(self.pool(x).flatten(1))


class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = (
            nn.Identity() if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


class TinyResNet(nn.Module):
    """A CIFAR-style residual net: stem, three groups of ``depth`` blocks, pooled head."""

    def __init__(self, width: int, depth: int, num_classes: int = NUM_CLASSES):
        super().__init__()
        conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.stem = nn.Sequential(conv, nn.BatchNorm2d(width), nn.ReLU())
        groups, c = [], width
        for i, mult in enumerate((1, 2, 4)):
            blocks = [Block(c, width * mult, 1 if i == 0 else 2)]
            blocks += [Block(width * mult, width * mult, 1) for _ in range(depth - 1)]
            groups.append(nn.Sequential(*blocks))
            c = width * mult
        self.layer1, self.layer2, self.layer3 = groups
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        self.default_taps = {"stages": ["layer1", "layer2", "layer3"], "embedding": "fc:input"}

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


PAIRS = {
    "conv": lambda: (TinyConv(8), TinyConv(4)),
    "resnet": lambda: (TinyResNet(16, 2), TinyResNet(8, 1)),
}


def batch(n: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(n, 3, 16, 16, generator=g),
        "y": torch.randint(0, NUM_CLASSES, (n,), generator=g),
        "index": torch.randperm(NUM_DATA, generator=g)[:n],
    }


@pytest.mark.parametrize("pair", sorted(PAIRS))
@pytest.mark.parametrize("name", GENERIC)
def test_every_method_trains_the_student_and_leaves_the_teacher_frozen(name, pair):
    torch.manual_seed(0)
    teacher, student = PAIRS[pair]()
    b = batch()
    distiller = create(name, student=student, teacher=teacher, example=b["x"], **EXTRA.get(name, {}))
    distiller.train()

    out = distiller(b)
    out["loss"].backward()

    assert torch.isfinite(out["loss"]), f"{name} on {pair}: loss {out['loss']}"
    parts = [k for k in out if k.startswith("loss_")]
    assert parts, f"{name} reports no named loss parts"
    assert all(torch.isfinite(out[k]).all() for k in parts)
    assert out["logits"].shape == (8, NUM_CLASSES)
    # the teacher: no gradients, eval mode even after distiller.train()
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training
    assert not any(m.training for m in teacher.modules())
    # every trainable part of the method (connectors, heads, regressors) is reached, by the
    # main loss or, for parts trained first and then frozen (FT's paraphraser), by its pre-stage
    for term in distiller.terms:
        missed = {pname: p for pname, p in term.named_parameters() if p.grad is None}
        if missed:
            stage = term.first_phase()
            assert stage is not None, f"{name} on {pair}: parameters {sorted(missed)} got no gradient"
            staged = {id(p) for p in stage.params}
            assert all(id(p) in staged for p in missed.values()), f"{name}: {sorted(missed)} never train"
            stage.loss(distiller.context(b)).backward()
        for pname, p in term.named_parameters():
            assert p.grad is not None, f"{name} on {pair}: parameter {pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{name} on {pair}: {pname} has a non-finite gradient"
    # and the student learns from the total: its head always gets a gradient
    assert student.fc.weight.grad is not None and student.fc.weight.grad.abs().sum() > 0
    # the method's own parameters are what the optimizer gets besides the student's
    trainable = {id(p) for p in distiller.trainable_parameters()}
    assert {id(p) for p in student.parameters()} <= trainable
    assert not {id(p) for p in teacher.parameters()} & trainable


@pytest.mark.parametrize("name", [n for n in GENERIC if METHODS.get(n).needs_teacher])
def test_distilling_methods_refuse_to_run_without_a_teacher(name):
    from kdistill.errors import KdistillError

    teacher, student = PAIRS["conv"]()
    with pytest.raises(KdistillError):
        create(name, student=student, teacher=None, example=batch()["x"], **EXTRA.get(name, {}))


def test_cli_lists_every_registered_method(capsys):
    assert main(["list", "methods", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert sorted(listed) == sorted(METHODS.names())
    assert {"kd", "ce"} <= set(listed)


@pytest.mark.parametrize("name", GENERIC)
def test_every_method_gives_the_same_loss_and_gradients_in_channels_last(name):
    """``train.channels_last`` (on by default on CUDA) converts student, teacher and inputs to
    NHWC; no method may depend on the layout (a ``.view`` of a feature map would fail on an
    NHWC tensor, a layout-dependent reduction would change the loss)."""

    def run(channels_last: bool):
        torch.manual_seed(0)
        teacher, student = PAIRS["resnet"]()
        b = batch()
        distiller = create(name, student=student, teacher=teacher, example=b["x"], **EXTRA.get(name, {}))
        distiller.train()
        if channels_last:
            student.to(memory_format=torch.channels_last)
            teacher.to(memory_format=torch.channels_last)
            b["x"] = b["x"].contiguous(memory_format=torch.channels_last)
            assert student.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
        torch.manual_seed(1)  # the same negatives / random draws in both runs
        out = distiller(b)
        out["loss"].backward()
        return out["loss"].detach(), student.stem[0].weight.grad.clone(), student.fc.weight.grad.clone()

    nchw, nhwc = run(False), run(True)
    torch.testing.assert_close(nhwc[0], nchw[0], rtol=1e-4, atol=1e-6)
    # Gradients as whole tensors. NHWC kernels sum in another order; through train-mode
    # BatchNorm on 8 samples (and AB's hinge at zero) those last-bit differences grow to
    # ~0.1-0.6% of the gradient's norm here, while a layout bug (channels read as pixels)
    # would change it by O(1).
    for a, b in zip(nchw[1:], nhwc[1:], strict=True):
        assert (b - a).norm() <= 2e-2 * a.norm(), f"{name}: gradients differ by {(b - a).norm() / a.norm():.2e}"
