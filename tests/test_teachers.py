"""Teachers: frozen modules, ensembles combined as Hinton et al. describe, the Distiller contract."""


import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdistill as kd
from kdistill.errors import ConfigError
from kdistill.teachers import EnsembleTeacher, ModuleTeacher


def _net(seed, d=6, k=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, k))


def test_module_teacher_is_frozen_and_stays_in_eval():
    t = ModuleTeacher(_net(0))
    assert all(not p.requires_grad for p in t.parameters())
    t.module.train()
    assert not t.module.training
    x = torch.randn(5, 6)
    a, b = t({"x": x}).logits, t({"x": x}).logits
    assert torch.equal(a, b)  # dropout off
    assert not a.requires_grad


def test_ensemble_modes_match_hand_computation():
    members = [_net(i) for i in range(3)]
    x = torch.randn(7, 6)
    logits = torch.stack([m.eval()(x).detach() for m in members])
    T = 3.0
    mean_prob = EnsembleTeacher(members, "mean_prob")({"x": x})
    hand = F.softmax(logits / T, -1).mean(0)
    assert torch.allclose(mean_prob.soft_targets(T), hand, atol=1e-6)
    assert torch.allclose(mean_prob.soft_targets(1.0), F.softmax(logits, -1).mean(0), atol=1e-6)

    mean_logit = EnsembleTeacher(members, "mean_logit")({"x": x})
    assert torch.allclose(mean_logit.soft_targets(T), F.softmax(logits.mean(0) / T, -1), atol=1e-6)

    geo = EnsembleTeacher(members, "geometric")({"x": x})
    g = F.softmax(logits / T, -1).log().mean(0).exp()
    g = g / g.sum(-1, keepdim=True)  # normalised geometric mean of probabilities
    assert torch.allclose(geo.soft_targets(T), g, atol=1e-6)


def test_ensemble_rejects_unknown_mode():
    with pytest.raises(ConfigError, match="mean_prob"):
        EnsembleTeacher([_net(0)], "median")


def test_distiller_contract_kd():
    student, teacher = _net(1), _net(2)
    d = kd.methods.create("kd", student=student, teacher=teacher, temperature=4.0, alpha=0.9)
    batch = {"x": torch.randn(8, 6), "y": torch.randint(0, 4, (8,)), "index": torch.arange(8)}
    d.train()
    out = d(batch)
    assert set(out) == {"loss", "logits", "loss_ce", "loss_kd"}
    assert torch.allclose(out["loss"], out["loss_ce"] + out["loss_kd"])
    # weights: 0.9 * KD + 0.1 * CE
    t_logits = teacher.eval()(batch["x"]).detach()
    s_logits = out["logits"].detach()
    assert float(out["loss_kd"].detach()) == pytest.approx(0.9 * float(kd.kd_loss(s_logits, t_logits, 4.0)), rel=1e-5)
    assert float(out["loss_ce"].detach()) == pytest.approx(0.1 * float(F.cross_entropy(s_logits, batch["y"])), rel=1e-5)
    out["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    # the teacher stays in eval mode and out of the student's parameters and state
    assert not teacher.training
    assert {id(p) for p in d.trainable_parameters()} == {id(p) for p in student.parameters()}
    assert all(k.startswith("student.") for k in d.state_dict())


def test_composition_of_terms_is_a_weighted_sum():
    student, teacher = _net(1), _net(2)
    batch = {"x": torch.randn(8, 6), "y": torch.randint(0, 4, (8,)), "index": torch.arange(8)}
    d = kd.methods.create([{"name": "kd", "weight": 2.0, "temperature": 2.0}, {"name": "ce", "weight": 0.5}],
                          student, teacher)
    out = d(batch)
    s = out["logits"].detach()
    t = teacher(batch["x"]).detach()
    expected = 2.0 * kd.kd_loss(s, t, 2.0) + 0.5 * F.cross_entropy(s, batch["y"])
    assert float(out["loss"].detach()) == pytest.approx(float(expected), rel=1e-5)


def test_create_errors_are_clear():
    with pytest.raises(Exception, match="Did you mean 'kd'"):
        kd.methods.create("kdd", student=_net(0), teacher=_net(1))
    with pytest.raises(ConfigError, match="temprature.*Did you mean 'temperature'"):
        kd.methods.create("kd", student=_net(0), teacher=_net(1), temprature=4.0)
    with pytest.raises(ConfigError, match="need a teacher"):
        kd.methods.create("kd", student=_net(0))


def test_ensemble_teacher_distils_at_temperature():
    members = [_net(i) for i in range(2)]
    d = kd.methods.create("kd", student=_net(5), teacher=EnsembleTeacher(members), temperature=2.0, alpha=1.0)
    x = torch.randn(4, 6)
    out = d({"x": x, "y": torch.zeros(4, dtype=torch.long), "index": torch.arange(4)})
    p = torch.stack([F.softmax(m(x).detach() / 2, -1) for m in members]).mean(0)
    lq = F.log_softmax(out["logits"].detach() / 2, -1)
    hand = (p * (p.log() - lq)).sum(-1).mean() * 4
    assert float(out["loss_kd"].detach()) == pytest.approx(float(hand), rel=1e-5)
    assert "loss_ce" not in out  # alpha = 1: a zero-weight CE term is not computed
