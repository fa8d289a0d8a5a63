"""Hinton KD: the seeds' worked numbers and the loss's mathematical properties."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdistill.losses import hard_label_ce, kd_loss, kl_to_targets, soft_targets


def _truncated_to(p, digits=3):
    # seed 000 writes its probabilities truncated (not rounded) to 3 decimals: 0.0117 -> 0.011
    return torch.floor(p * 10**digits + 1e-6) / 10**digits


def test_seed_softmax_of_0_to_4():
    # seed 000: a = [0, 1, 2, 3, 4] -> softmax = [0.011, 0.031, 0.086, 0.234, 0.636]
    p = soft_targets(torch.tensor([0.0, 1, 2, 3, 4]), 1.0)
    assert torch.allclose(_truncated_to(p), torch.tensor([0.011, 0.031, 0.086, 0.234, 0.636]), atol=1e-6)


def test_seed_softmax_of_0_to_4_at_T3():
    # seed 000: Distilled_a(T=3) = [0.092, 0.128, 0.179, 0.250, 0.349]
    p = soft_targets(torch.tensor([0.0, 1, 2, 3, 4]), 3.0)
    assert torch.allclose(_truncated_to(p), torch.tensor([0.092, 0.128, 0.179, 0.250, 0.349]), atol=1e-6)


@pytest.mark.parametrize("T, expected", [(1.0, 0.982), (10.0, 0.599)])
def test_seed_cat_dog_example(T, expected):
    # seed 003: logits cat 5, dog 1 -> P(cat) = 0.982 at T=1, 0.599 at T=10
    p = soft_targets(torch.tensor([5.0, 1.0]), T)
    assert abs(float(p[0]) - expected) < 6e-4
    assert abs(float(p.sum()) - 1) < 1e-6


def test_higher_temperature_is_softer():
    z = torch.tensor([[0.0, 1, 2, 3, 4]])
    ent = [float(-(soft_targets(z, t) * soft_targets(z, t).log()).sum()) for t in (1, 2, 4, 8, 100)]
    assert all(a < b for a, b in zip(ent, ent[1:], strict=False))
    assert abs(ent[-1] - math.log(5)) < 1e-3  # T -> inf: uniform


def test_kd_loss_zero_for_identical_and_positive_otherwise():
    z = torch.randn(8, 10)
    assert float(kd_loss(z, z.clone(), 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(z + torch.randn(8, 10), z, 4.0)) > 0


def test_kd_loss_matches_hand_formula():
    torch.manual_seed(0)
    s, t, T = torch.randn(4, 5), torch.randn(4, 5), 3.0
    p = F.softmax(t / T, -1)
    q = F.softmax(s / T, -1)
    hand = (p * (p.log() - q.log())).sum(-1).mean() * T * T
    assert float(kd_loss(s, t, T)) == pytest.approx(float(hand), rel=1e-5)


def test_T_squared_keeps_gradient_magnitude_comparable():
    # Hinton sec. 2: soft-target gradients scale as 1/T^2 for large T; the T^2 factor undoes it
    torch.manual_seed(0)
    t = torch.randn(64, 10)
    base = torch.randn(64, 10)
    norms_scaled, norms_raw = [], []
    for T in (4.0, 8.0, 16.0, 32.0):
        s = base.clone().requires_grad_(True)
        kd_loss(s, t, T).backward()
        norms_scaled.append(float(s.grad.norm()))
        norms_raw.append(float(s.grad.norm()) / T**2)
    # without T^2 the gradient shrinks ~4x per doubling of T; with it, it stays within 2x
    assert max(norms_scaled) / min(norms_scaled) < 2.0
    assert norms_raw[0] / norms_raw[-1] > 50


def test_kd_gradient_high_T_limit_is_logit_matching():
    # Hinton sec. 2.1: for large T and zero-mean logits, dC/dz_i -> (z_i - v_i) / (N T^2) * T^2 / N
    torch.manual_seed(1)
    n = 10
    z = torch.randn(1, n)
    v = torch.randn(1, n)
    z, v = z - z.mean(), v - v.mean()
    T = 1000.0
    s = z.clone().requires_grad_(True)
    kd_loss(s, v, T).backward()
    assert torch.allclose(s.grad, (z - v) / n, atol=1e-4)


def test_teacher_logits_get_no_gradient():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    kd_loss(s, t, 2.0).backward()
    assert t.grad is None and s.grad is not None


def test_kl_to_targets_handles_zero_mass_and_equals_kd():
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    assert float(kl_to_targets(s, F.log_softmax(t / 2, -1), 2.0)) == pytest.approx(float(kd_loss(s, t, 2.0)), rel=1e-5)
    target = torch.tensor([[0.5, 0.5, 0, 0, 0, 0]]).log()
    out = kl_to_targets(torch.zeros(1, 6), target, 1.0)
    assert torch.isfinite(out)
    assert float(out) == pytest.approx(math.log(6) - math.log(2), rel=1e-5)


def test_hard_label_ce_skips_unlabelled():
    logits = torch.randn(4, 3)
    y = torch.tensor([0, -1, 2, -1])
    expected = F.cross_entropy(logits[[0, 2]], y[[0, 2]])
    assert float(hard_label_ce(logits, y)) == pytest.approx(float(expected), rel=1e-6)
    assert float(hard_label_ce(logits, torch.full((4,), -1))) == 0.0


def test_nan_teacher_targets_are_not_hidden():
    target = torch.tensor([[float("nan"), 0.0, 0.0]])
    assert torch.isnan(kl_to_targets(torch.zeros(1, 3), target, 1.0))
