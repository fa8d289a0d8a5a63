"""Token-level divergences (forward/reverse KL, GKD's JSD, DistiLLM's skew KLs, TV):
mathematical properties, masking, top-k + tail, and the registered methods."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdistill.errors import ConfigError
from kdistill.methods import Context, create
from kdistill.methods._token import TokenTopK, divergence, token_loss, topk_tail, truncate_topk
from kdistill.teachers import TeacherOutput

KINDS = ["forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "tvd"]


def logits(seed: int, shape=(3, 5, 11), scale=2.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


def lsm(x):
    return F.log_softmax(x, -1)


def direct(kind: str, p, q, c=0.5):
    """The formulas written out on probabilities (float64), independent of the code."""
    kl = lambda a, b: (a * (a / b).log()).sum(-1)
    if kind == "forward_kl":
        return kl(p, q)
    if kind == "reverse_kl":
        return kl(q, p)
    if kind == "jsd":
        m = c * p + (1 - c) * q
        return c * kl(p, m) + (1 - c) * kl(q, m)
    if kind == "skew_kl":
        return kl(p, c * p + (1 - c) * q)
    if kind == "skew_reverse_kl":
        return kl(q, (1 - c) * p + c * q)
    return 0.5 * (p - q).abs().sum(-1)


@pytest.mark.parametrize("kind", KINDS)
def test_matches_direct_formula_and_is_zero_for_equal(kind):
    lp, lq = lsm(logits(0)), lsm(logits(1))
    got = divergence(kind, lp, lq, 0.3)
    want = direct(kind, lp.exp(), lq.exp(), 0.3)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert (got > 0).all()
    assert divergence(kind, lp, lp, 0.3).abs().max() < 1e-12


def test_jsd_limits_and_symmetry():
    lp, lq = lsm(logits(2)), lsm(logits(3))
    fkl, rkl = divergence("forward_kl", lp, lq), divergence("reverse_kl", lp, lq)
    eps = 1e-5
    # JSD(beta) = beta KL(p||q) + O(beta^2): the beta -> 0 limit of JSD/beta is the forward KL
    torch.testing.assert_close(divergence("jsd", lp, lq, eps) / eps, fkl, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(divergence("jsd", lp, lq, 1 - eps) / eps, rkl, rtol=1e-3, atol=1e-6)
    # TRL's convention at the end points
    torch.testing.assert_close(divergence("jsd", lp, lq, 0.0), fkl)
    torch.testing.assert_close(divergence("jsd", lp, lq, 1.0), rkl)
    # symmetric at beta = 0.5, not elsewhere; bounded by log 2 there
    torch.testing.assert_close(divergence("jsd", lp, lq, 0.5), divergence("jsd", lq, lp, 0.5))
    assert not torch.allclose(divergence("jsd", lp, lq, 0.2), divergence("jsd", lq, lp, 0.2))
    assert (divergence("jsd", lp, lq, 0.5) <= math.log(2) + 1e-12).all()
    # skew KLs: alpha = 0 gives the plain KLs; alpha bounds the skew KL by log(1/alpha)
    torch.testing.assert_close(divergence("skew_kl", lp, lq, 0.0), fkl)
    torch.testing.assert_close(divergence("skew_reverse_kl", lp, lq, 0.0), rkl)
    far = lsm(logits(4, scale=30.0))
    assert (divergence("skew_kl", far, lq, 0.1) <= math.log(10) + 1e-9).all()
    assert (divergence("forward_kl", far, lq) > math.log(10)).any()
    # TV: symmetric, in [0, 1]
    torch.testing.assert_close(divergence("tvd", lp, lq), divergence("tvd", lq, lp))
    assert (divergence("tvd", far, lq) <= 1).all()


def test_reverse_kl_gradient_matches_formula():
    """d KL(q||p) / d z_s = q * (log q - log p - KL(q||p)) for q = softmax(z_s)."""
    zs, zt = logits(5, (4, 7)).requires_grad_(), logits(6, (4, 7))
    rkl = divergence("reverse_kl", lsm(zt), lsm(zs))
    rkl.sum().backward()
    q, lq, lp = lsm(zs).exp().detach(), lsm(zs).detach(), lsm(zt)
    want = q * (lq - lp - rkl.detach()[:, None])
    torch.testing.assert_close(zs.grad, want)


def test_masking_exact_and_temperature():
    zs, zt = logits(7).float(), logits(8).float()
    labels = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(0))
    labels[0, :3] = -100  # prompt
    labels[2, 4] = -100  # padding
    keep = labels != -100
    for kind in KINDS:
        got = token_loss(kind, zs, TeacherOutput(zt), labels, temperature=2.0, coef=0.3)
        per = divergence(kind, lsm(zt / 2.0), lsm(zs / 2.0), 0.3)
        torch.testing.assert_close(got, per[keep].mean())
        # masked positions may hold anything: the loss does not see them
        zs2 = zs.clone()
        zs2[~keep] = 1e4
        torch.testing.assert_close(token_loss(kind, zs2, TeacherOutput(zt), labels, 2.0, 0.3), got)
    none = torch.full((3, 5), -100)
    assert token_loss("forward_kl", zs, TeacherOutput(zt), none) == 0


def test_topk_tail_exact_at_full_vocab_and_close_at_small_k():
    zs, zt = logits(9).float(), logits(10, scale=4.0).float()
    labels = torch.zeros(3, 5, dtype=torch.long)
    for kind in KINDS:
        full = token_loss(kind, zs, TeacherOutput(zt), labels, coef=0.3)
        at_v = token_loss(kind, zs, TeacherOutput(zt), labels, coef=0.3, top_k=11)
        torch.testing.assert_close(at_v, full, rtol=1e-5, atol=1e-6)
        lp, idx = truncate_topk(lsm(zt), 11)
        cached = TokenTopK(lp, topk_logprobs=lp.half().float(), topk_indices=idx.short())
        torch.testing.assert_close(token_loss(kind, zs, cached, labels, coef=0.3), full, rtol=2e-3, atol=2e-3)
    # the tail bins hold the rest of each distribution's mass
    lp, idx = truncate_topk(lsm(zt), 3)
    log_p, log_q = topk_tail(lsm(zs), lp, idx)
    torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(3, 5))
    torch.testing.assert_close(log_q.exp().sum(-1), torch.ones(3, 5))
    # coarsening can only lose information: the k+1-bin KL is at most the full KL
    # (data processing inequality), and grows towards it with k
    fk = [token_loss("forward_kl", zs, TeacherOutput(zt), labels, top_k=k) for k in (1, 3, 6, 11)]
    assert all(a <= b + 1e-6 for a, b in zip(fk, fk[1:]))


def test_topk_refuses_temperature_and_mismatched_vocab():
    zs, zt = logits(11).float(), logits(12).float()
    y = torch.zeros(3, 5, dtype=torch.long)
    with pytest.raises(ConfigError, match="temperature 1"):
        token_loss("forward_kl", zs, TeacherOutput(zt), y, temperature=2.0, top_k=4)
    with pytest.raises(ConfigError, match="sequence-level KD"):
        token_loss("forward_kl", zs, TeacherOutput(zt[..., :9]), y)


def test_methods_registered_with_defaults_and_checks():
    student = torch.nn.Linear(4, 11)
    d = create("gkd", student, torch.nn.Linear(4, 11))
    assert [m.name for m in d.terms] == ["gkd", "ce"] and d.weights == [1.0, 0.0]
    assert d.terms[0].cfg.beta == 0.5 and d.terms[0].cfg.temperature == 1.0
    assert create("skew_kl", student, torch.nn.Linear(4, 11)).terms[0].cfg.alpha == 0.1
    with pytest.raises(ConfigError, match="beta"):
        create("gkd", student, torch.nn.Linear(4, 11), beta=1.5)
    with pytest.raises(ConfigError, match="top_k"):
        create("tvd", student, torch.nn.Linear(4, 11), top_k=0)
    # on classifier logits (N, C) with class labels every sample takes part
    x = torch.randn(6, 4)
    batch = {"x": x, "y": torch.tensor([0, 1, 2, -1, 4, 5])}
    teacher = torch.nn.Linear(4, 11)
    d = create([{"name": "forward_kl"}], student, teacher)
    ctx = Context(batch, student(x), teacher=TeacherOutput(teacher(x)))
    want = divergence("forward_kl", lsm(teacher(x).double()), lsm(student(x).double())).mean()
    torch.testing.assert_close(d.terms[0](ctx).double(), want, rtol=1e-5, atol=1e-6)


def test_token_ce_masks_ignored_tokens():
    from kdistill.losses import hard_label_ce

    z = logits(13).float()
    y = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(1))
    y[1, :2] = -100
    want = F.cross_entropy(z.reshape(-1, 11), y.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(hard_label_ce(z, y), want)


def test_bf16_logits_reduced_in_fp32():
    """bf16 logits (autocast) give the fp32 loss of the same rounded values, never a negative KL."""
    zs, zt = logits(14, (4, 8, 50), scale=0.05).float(), logits(15, (4, 8, 50), scale=0.05).float()
    zs[..., :] += zt  # nearly equal distributions: where a bf16 reduction goes negative
    y = torch.zeros(4, 8, dtype=torch.long)
    bs, bt = zs.bfloat16(), zt.bfloat16()
    for kind in KINDS:
        got = token_loss(kind, bs, TeacherOutput(bt), y, coef=0.3)
        assert got.dtype == torch.float32 and got >= 0
        torch.testing.assert_close(got, token_loss(kind, bs.float(), TeacherOutput(bt.float()), y, coef=0.3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert token_loss("forward_kl", bs, TeacherOutput(bt), y).dtype == torch.float32
