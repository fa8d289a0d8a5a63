"""DeiT's distillation token (methods/deit.py): the contract on a tiny two-head student in
timm's layout (``head`` on the class token, ``head_dist`` on the distillation token, the
forward gives their average); the real timm models are in tests/test_zoo.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdistill.errors import ConfigError
from kdistill.methods import create

K = 3


class TwoHead(nn.Module):
    """Two heads on one body; ``forward`` is their average, as timm's distilled DeiT."""

    def __init__(self, d_in: int = 6, width: int = 16):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, width), nn.ReLU())
        self.head = nn.Linear(width, K)
        self.head_dist = nn.Linear(width, K)

    def forward(self, x):
        h = self.body(x)
        return (self.head(h) + self.head_dist(h)) / 2


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = x[:, :K].argmax(1)
    return x, y


def _teacher():
    """A fixed teacher that predicts the *next* class: its argmax is (y + 1) % K."""
    t = nn.Linear(6, K, bias=False)
    with torch.no_grad():
        t.weight.copy_(torch.roll(torch.eye(K, 6), 1, dims=0) * 5)
    return t


def test_hard_distillation_is_half_ce_on_labels_and_half_ce_on_the_teachers_argmax():
    torch.manual_seed(0)
    student, teacher = TwoHead(), _teacher()
    x, y = _data(8)
    d = create("deit", student=student, teacher=teacher)
    # the added ce term has weight 0: the class head has its own label loss
    assert [(w, t.name) for w, t in zip(d.weights, d.terms)] == [(1.0, "deit"), (0.0, "ce")]
    out = d({"x": x, "y": y})
    h = student.body(x)
    with torch.no_grad():
        t_arg = teacher(x).argmax(1)
    assert torch.equal(t_arg, (y + 1) % K)
    want_cls = 0.5 * F.cross_entropy(student.head(h), y)
    want_dist = 0.5 * F.cross_entropy(student.head_dist(h), t_arg)
    torch.testing.assert_close(out["loss_deit_cls"], want_cls)
    torch.testing.assert_close(out["loss_deit_dist"], want_dist)
    torch.testing.assert_close(out["loss"], want_cls + want_dist)
    # what is evaluated and exported is the average of both heads
    torch.testing.assert_close(out["logits"], (student.head(h) + student.head_dist(h)) / 2)


def test_each_head_learns_only_from_its_own_target():
    torch.manual_seed(0)
    student, teacher = TwoHead(), _teacher()
    x, y = _data(8)
    out = create("deit", student=student, teacher=teacher)({"x": x, "y": y})
    out["loss_deit_dist"].backward(retain_graph=True)
    assert student.head.weight.grad is None and student.head_dist.weight.grad.abs().sum() > 0
    student.zero_grad(set_to_none=True)
    out["loss_deit_cls"].backward()
    assert student.head_dist.weight.grad is None and student.head.weight.grad.abs().sum() > 0


def test_soft_distillation_uses_the_papers_defaults_and_is_zero_at_the_teachers_distribution():
    torch.manual_seed(0)
    student, teacher = TwoHead(), _teacher()
    x, y = _data(8)
    d = create("deit", student=student, teacher=teacher, distillation="soft")
    term = d.terms[0]
    assert term.cfg.alpha == 0.1 and term.cfg.temperature == 3.0
    out = d({"x": x, "y": y})
    h = student.body(x)
    tau = 3.0
    p_t = F.softmax(teacher(x).detach() / tau, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(student.head_dist(h) / tau, 1))).sum(1).mean() * tau**2
    torch.testing.assert_close(out["loss_deit_dist"], 0.1 * kl)
    torch.testing.assert_close(out["loss_deit_cls"], 0.9 * F.cross_entropy(student.head(h), y))
    # a distillation head that already gives the teacher's logits has nothing left to learn
    with torch.no_grad():
        student.head_dist.weight.zero_()
        student.head_dist.bias.zero_()
        student.body[0].weight.copy_(torch.cat([torch.eye(6), torch.zeros(10, 6)]))
        student.body[0].bias.fill_(10.0)  # ReLU passes x + 10 unchanged
        student.head_dist.weight[:, :6].copy_(teacher.weight)
        student.head_dist.bias.copy_(-teacher.weight[:, :6].sum(1) * 10.0)
    out = d({"x": x, "y": y})
    assert out["loss_deit_dist"].abs() < 1e-5


def test_training_teaches_the_distillation_head_the_teacher_and_the_class_head_the_labels():
    """The teacher disagrees with every label (it says y + 1): after training, the
    distillation head follows the teacher and the class head the labels."""
    torch.manual_seed(0)
    student, teacher = TwoHead(), _teacher()
    x, y = _data(192)
    d = create("deit", student=student, teacher=teacher)
    opt = torch.optim.Adam(d.trainable_parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        d({"x": x, "y": y})["loss"].backward()
        opt.step()
    with torch.no_grad():
        h = student.body(x)
        cls_acc = (student.head(h).argmax(1) == y).float().mean()
        dist_acc = (student.head_dist(h).argmax(1) == (y + 1) % K).float().mean()
    assert cls_acc > 0.9 and dist_acc > 0.9


def test_a_student_without_two_heads_is_refused_in_one_line():
    student = nn.Sequential(nn.Linear(6, K))
    with pytest.raises(ConfigError, match="distillation-token head.*head"):
        create("deit", student=student, teacher=_teacher())
    with pytest.raises(ConfigError, match="'hard' or 'soft'"):
        create("deit", student=TwoHead(), teacher=_teacher(), distillation="medium")
    with pytest.raises(ConfigError, match="alpha"):
        create("deit", student=TwoHead(), teacher=_teacher(), alpha=1.5)
