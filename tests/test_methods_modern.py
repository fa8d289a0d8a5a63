"""Properties and hand-computed values of the modern method set: SP, PKT, CC, VID, CRD, DKD,
DIST and ReviewKD. Each reference value is computed here from the paper's formula, written
out independently of the library's code."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdistill.errors import ConfigError, DataError, ShapeError
from kdistill.losses import kd_loss
from kdistill.methods import create
from kdistill.methods.cc import rbf_taylor_correlation
from kdistill.methods.crd import nce_loss
from kdistill.methods.dist import dist_loss, relation_loss
from kdistill.methods.dkd import dkd_parts
from kdistill.methods.pkt import pkt_loss
from kdistill.methods.reviewkd import hcl_loss
from kdistill.methods.sp import sp_loss
from kdistill.methods.vid import VIDRegressor, gaussian_nll
from kdistill.models import create_model
from kdistill.runs import with_num_data


class Conv(nn.Module):
    def __init__(self, width: int, num_classes: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.act1, self.act2 = nn.ReLU(), nn.ReLU()
        self.fc = nn.Linear(2 * width, num_classes)
        self.default_taps = {"stages": ["act1", "act2"], "embedding": "fc:input"}

    def forward(self, x):
        x = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def conv_batch(n=6, num_data=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 3, 8, 8, generator=g), "y": torch.randint(0, 4, (n,), generator=g),
            "index": torch.randperm(num_data, generator=g)[:n]}


# -- DKD --------------------------------------------------------------------------------------
def test_dkd_parts_recombine_into_classical_kd():
    """Zhao et al. 2022, Sec. 3.1: KD = TCKD + (1 - p_target^teacher) * NCKD, sample by sample."""
    torch.manual_seed(0)
    s, t = torch.randn(7, 6) * 3, torch.randn(7, 6) * 3
    y = torch.randint(0, 6, (7,))
    for temp in (1.0, 4.0):
        tckd, nckd = dkd_parts(s, t, y, temp)
        p_target = F.softmax(t / temp, 1).gather(1, y[:, None]).squeeze(1)
        kd = kd_loss(s, t, temp, reduction="none")
        torch.testing.assert_close(tckd + (1 - p_target) * nckd, kd, rtol=1e-5, atol=1e-6)


def test_dkd_parts_match_hand_computed_values():
    s, t, y, temp = torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([0]), 2.0
    ps = [math.exp(v / temp) for v in (1.0, 2.0, 0.5)]
    pt = [math.exp(v / temp) for v in (2.0, 0.0, 1.0)]
    ps, pt = [v / sum(ps) for v in ps], [v / sum(pt) for v in pt]
    b_s, b_t = (ps[0], 1 - ps[0]), (pt[0], 1 - pt[0])
    tckd = sum(q * math.log(q / p) for q, p in zip(b_t, b_s, strict=True)) * temp**2
    qs = [ps[1] / (1 - ps[0]), ps[2] / (1 - ps[0])]
    qt = [pt[1] / (1 - pt[0]), pt[2] / (1 - pt[0])]
    nckd = sum(q * math.log(q / p) for q, p in zip(qt, qs, strict=True)) * temp**2
    got_t, got_n = dkd_parts(s, t, y, temp)
    assert got_t.item() == pytest.approx(tckd, rel=1e-5)
    assert got_n.item() == pytest.approx(nckd, rel=1e-5)


def test_dkd_is_zero_for_identical_logits_and_has_finite_gradients_at_extremes():
    z = torch.tensor([[30.0, -30.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 2])
    tckd, nckd = dkd_parts(z, z.detach(), y, 4.0)
    assert tckd.abs().max() < 1e-6 and nckd.abs().max() < 1e-6
    (tckd.sum() + nckd.sum()).backward()
    assert torch.isfinite(z.grad).all()


def test_dkd_term_weights_and_linear_warmup():
    torch.manual_seed(0)
    teacher, student = Conv(8), Conv(4)
    b = conv_batch()
    d = create("dkd", student=student, teacher=teacher, example=b["x"], alpha=1.0, beta=8.0)
    term = d.terms[0]
    with torch.no_grad():
        tckd, nckd = dkd_parts(student(b["x"]), teacher(b["x"]), b["y"], 4.0)
    for epoch, ramp in ((0, 1 / 20), (9, 10 / 20), (19, 1.0), (50, 1.0)):
        d.set_epoch(epoch, 60)
        with torch.no_grad():
            out = d(b)
        assert out["loss_dkd_tckd"].item() == pytest.approx(ramp * tckd.mean().item(), rel=1e-5)
        assert out["loss_dkd_nckd"].item() == pytest.approx(ramp * 8.0 * nckd.mean().item(), rel=1e-5)
    assert term.temperature == 4.0 and term.cfg.warmup == 20


def test_dkd_uses_the_teachers_class_for_unlabelled_samples():
    torch.manual_seed(1)
    teacher, student = Conv(8), Conv(4)
    b = conv_batch()
    d = create([{"name": "dkd", "warmup": 0}], student=student, teacher=teacher, example=b["x"])
    with torch.no_grad():
        t_logits = teacher(b["x"])
        unlabelled = dict(b, y=torch.full_like(b["y"], -1))
        as_teacher_labels = dict(b, y=t_logits.argmax(1))
        assert d(unlabelled)["loss"].item() == pytest.approx(d(as_teacher_labels)["loss"].item(), rel=1e-6)


# -- DIST -------------------------------------------------------------------------------------
def test_dist_is_zero_for_identical_logits():
    z = torch.randn(5, 7)
    parts = dist_loss(z, z.clone())
    assert parts["inter"].abs() < 1e-6 and parts["intra"].abs() < 1e-6


def test_dist_matches_pearson_from_corrcoef():
    torch.manual_seed(2)
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    beta, gamma, tau = 2.0, 0.5, 3.0
    ys, yt = F.softmax(s / tau, 1), F.softmax(t / tau, 1)
    inter = 1 - sum(torch.corrcoef(torch.stack([ys[i], yt[i]]))[0, 1] for i in range(4)) / 4
    intra = 1 - sum(torch.corrcoef(torch.stack([ys[:, j], yt[:, j]]))[0, 1] for j in range(6)) / 6
    parts = dist_loss(s, t, beta, gamma, tau)
    assert parts["inter"].item() == pytest.approx(tau**2 * beta * inter.item(), rel=1e-4)
    assert parts["intra"].item() == pytest.approx(tau**2 * gamma * intra.item(), rel=1e-4)


def test_dist_relations_are_invariant_to_positive_affine_maps():
    """Pearson correlation ignores a positive scale and a shift of each compared vector."""
    torch.manual_seed(3)
    ys, yt = torch.rand(5, 8), torch.rand(5, 8)
    base = relation_loss(ys, yt)
    scale, shift = torch.rand(5, 1) * 10 + 0.1, torch.randn(5, 1) * 4
    torch.testing.assert_close(relation_loss(scale * ys + shift, yt), base, rtol=1e-4, atol=1e-5)
    # anti-correlated vectors give the maximum, 2
    assert relation_loss(-ys, ys).item() == pytest.approx(2.0, abs=1e-5)
    # the logit-level loss ignores a per-sample shift of the logits (softmax does)
    z_s, z_t = torch.randn(5, 8), torch.randn(5, 8)
    a, b = dist_loss(z_s, z_t), dist_loss(z_s + torch.randn(5, 1) * 5, z_t)
    torch.testing.assert_close(a["inter"], b["inter"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a["intra"], b["intra"], rtol=1e-4, atol=1e-5)


# -- SP ---------------------------------------------------------------------------------------
def test_sp_matches_hand_computed_gram_matrices():
    torch.manual_seed(4)
    fs, ft = torch.randn(3, 2, 2, 2), torch.randn(3, 5)
    def gram(f):
        rows = f.reshape(3, -1).tolist()
        g = [[sum(a * b for a, b in zip(r1, r2, strict=True)) for r2 in rows] for r1 in rows]
        return [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in g]
    gs, gt = gram(fs), gram(ft)
    expected = sum((gt[i][j] - gs[i][j]) ** 2 for i in range(3) for j in range(3)) / 9
    assert sp_loss(fs, ft).item() == pytest.approx(expected, rel=1e-5)


def test_sp_is_zero_for_identical_features_and_ignores_feature_scale():
    torch.manual_seed(5)
    fs, ft = torch.randn(6, 4, 3, 3), torch.randn(6, 16)
    assert sp_loss(fs, fs.clone()).item() < 1e-10
    base = sp_loss(fs, ft)
    torch.testing.assert_close(sp_loss(7.5 * fs, 0.01 * ft), base, rtol=1e-4, atol=1e-7)
    assert base.item() > 0


# -- PKT --------------------------------------------------------------------------------------
def test_pkt_matches_hand_computed_conditional_probabilities():
    fs = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, -1.0]])
    ft = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    def cond(rows):
        unit = [[v / math.sqrt(sum(w * w for w in r)) for v in r] for r in rows]
        k = [[(sum(a * b for a, b in zip(u, v, strict=True)) + 1) / 2 for v in unit] for u in unit]
        return [[v / sum(row) for v in row] for row in k]
    ps, pt = cond(fs.tolist()), cond(ft.tolist())
    expected = sum(pt[i][j] * math.log(pt[i][j] / ps[i][j]) for i in range(3) for j in range(3)) / 9
    assert pkt_loss(fs, ft).item() == pytest.approx(expected, rel=1e-4)


def test_pkt_is_zero_for_identical_and_positive_otherwise():
    torch.manual_seed(6)
    f = torch.randn(8, 10)
    assert abs(pkt_loss(f, f.clone()).item()) < 1e-7
    assert abs(pkt_loss(3 * f, f).item()) < 1e-7  # cosine kernel: scale-free
    assert pkt_loss(torch.randn(8, 10), f).item() > 0


# -- CC ---------------------------------------------------------------------------------------
def test_cc_taylor_kernel_converges_to_the_gaussian_rbf():
    torch.manual_seed(7)
    e = F.normalize(torch.randn(5, 4), dim=1)
    exact = torch.exp(-0.4 * torch.cdist(e, e) ** 2)
    assert (rbf_taylor_correlation(e, 0.4, order=12) - exact).abs().max() < 1e-6
    # order 2 is the published approximation: exp(-2g) * (1 + 2g s + (2g s)^2 / 2)
    s = e @ e.t()
    order2 = math.exp(-0.8) * (1 + 0.8 * s + 0.32 * s**2)
    torch.testing.assert_close(rbf_taylor_correlation(e, 0.4, order=2), order2, rtol=1e-5, atol=1e-6)


def test_cc_term_is_zero_when_both_heads_give_the_same_embedding():
    torch.manual_seed(8)
    teacher, student = Conv(4), Conv(4)
    student.load_state_dict(teacher.state_dict())
    b = conv_batch()
    d = create("cc", student=student, teacher=teacher, example=b["x"])
    term = d.terms[0]
    term.embed_s.load_state_dict(term.embed_t.state_dict())
    assert d(b)["loss_cc"].abs().item() < 1e-9
    term.embed_s.proj.weight.data.normal_()
    assert d(b)["loss_cc"].item() > 0


# -- CRD --------------------------------------------------------------------------------------
def test_nce_loss_matches_hand_computed_value():
    scores = torch.tensor([[0.5, 0.1, 0.2], [0.05, 0.3, 0.9]])
    noise = 2 / 4  # K = 2 negatives, uniform noise over 4 samples
    expected = 0.0
    for row in scores.tolist():
        expected += math.log(row[0] / (row[0] + noise)) + sum(math.log(noise / (v + noise)) for v in row[1:])
    assert nce_loss(scores, 4).item() == pytest.approx(-expected / 2, rel=1e-5)


def test_crd_updates_the_memory_banks_at_the_batch_indices_only():
    torch.manual_seed(9)
    teacher, student = Conv(8), Conv(4)
    b = conv_batch(n=4, num_data=10)
    d = create("crd", student=student, teacher=teacher, example=b["x"], num_data=10)
    term = d.terms[0]
    assert term.num_negatives == 9  # 16384 clipped to the other samples
    assert term.memory_s.shape == (10, 128) and term.memory_t.shape == (10, 128)
    before_s, before_t = term.memory_s.clone(), term.memory_t.clone()
    d.train()
    out = d(b)
    assert torch.isfinite(out["loss"])
    with torch.no_grad():
        ctx = d.context(b)
        v_s = term.embed_s(ctx.student_features[term.student_taps[0]])
        v_t = term.embed_t(ctx.teacher.features[term.teacher_taps[0]])
    idx, rest = b["index"], torch.tensor([i for i in range(10) if i not in b["index"].tolist()])
    want_s = F.normalize(0.5 * before_s[idx] + 0.5 * v_s, dim=1)
    want_t = F.normalize(0.5 * before_t[idx] + 0.5 * v_t, dim=1)
    torch.testing.assert_close(term.memory_s[idx], want_s, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(term.memory_t[idx], want_t, rtol=1e-5, atol=1e-6)
    assert torch.equal(term.memory_s[rest], before_s[rest])
    assert torch.equal(term.memory_t[rest], before_t[rest])
    # the normalising constants are fixed by the first batch
    z = term.z.clone()
    assert (z > 0).all()
    d(conv_batch(n=4, num_data=10, seed=1))
    assert torch.equal(term.z, z)
    # evaluation leaves the banks alone
    d.eval()
    frozen = term.memory_s.clone()
    d(b)
    assert torch.equal(term.memory_s, frozen)


def test_crd_needs_the_dataset_size_and_indices_inside_it():
    teacher, student = Conv(8), Conv(4)
    b = conv_batch()
    with pytest.raises(ConfigError, match="num_data"):
        create("crd", student=student, teacher=teacher, example=b["x"])
    d = create("crd", student=student, teacher=teacher, example=b["x"], num_data=5)
    with pytest.raises(DataError, match="outside"):
        d(dict(b, index=torch.arange(6)))


def test_run_fills_num_data_only_where_a_term_has_that_setting():
    assert with_num_data({"name": "crd"}, 123) == {"name": "crd", "num_data": 123}
    assert with_num_data({"name": "crd", "num_data": 7}, 123) == {"name": "crd", "num_data": 7}
    assert with_num_data({"name": "kd", "temperature": 4}, 123) == {"name": "kd", "temperature": 4}
    terms = with_num_data([{"name": "kd", "weight": 0.9}, {"name": "crd", "weight": 0.8}], 50)
    assert terms == [{"name": "kd", "weight": 0.9}, {"name": "crd", "weight": 0.8, "num_data": 50}]
    assert with_num_data(None, 5) is None


# -- VID --------------------------------------------------------------------------------------
def test_gaussian_nll_matches_hand_computed_value_and_is_minimised_at_the_residual_variance():
    target = torch.tensor([[[[1.0]], [[2.0]]]])
    mean = torch.tensor([[[[0.5]], [[3.0]]]])
    var = torch.tensor([2.0, 0.5])
    expected = (0.5 * (0.25 / 2.0 + math.log(2.0)) + 0.5 * (1.0 / 0.5 + math.log(0.5))) / 2
    assert gaussian_nll(target, mean, var).item() == pytest.approx(expected, rel=1e-6)
    torch.manual_seed(10)
    t, mu = torch.randn(8, 3, 2, 2), torch.randn(8, 3, 2, 2)
    best = ((t - mu) ** 2).mean((0, 2, 3))
    for factor in (0.5, 0.9, 1.1, 2.0):
        assert gaussian_nll(t, mu, best * factor) > gaussian_nll(t, mu, best)


def test_vid_nll_decreases_as_the_regressor_fits_a_linear_teacher():
    torch.manual_seed(11)
    s = torch.randn(32, 4, 2, 2)
    t = F.conv2d(s, torch.randn(6, 4, 1, 1)) + 0.05 * torch.randn(32, 6, 2, 2)
    reg = VIDRegressor(4, 6, 2, init_var=5.0, eps=1e-5)
    start = reg(s, t).item()
    opt = torch.optim.Adam(reg.parameters(), lr=0.1)
    for _ in range(60):
        opt.zero_grad()
        loss = reg(s, t)
        loss.backward()
        opt.step()
    assert loss.item() < start - 1.0
    # the variance falls from its initial 5.0 as the mean starts to explain the teacher
    assert reg.variance().max().item() < 1.0


def test_vid_pools_the_larger_map_to_the_smaller():
    reg = VIDRegressor(2, 3, 2, 5.0, 1e-5)
    s, t = torch.randn(2, 2, 8, 8), torch.randn(2, 3, 4, 4)
    expected = gaussian_nll(t, reg.mean(F.adaptive_avg_pool2d(s, 4)), reg.variance())
    torch.testing.assert_close(reg(s, t), expected)


# -- ReviewKD ---------------------------------------------------------------------------------
def test_hcl_matches_hand_computed_pyramid():
    torch.manual_seed(12)
    fs, ft = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    def pooled(f, size):
        return f.reshape(2, 3, size, 4 // size, size, 4 // size).mean((3, 5))
    full = ((fs - ft) ** 2).mean()
    l2 = ((pooled(fs, 2) - pooled(ft, 2)) ** 2).mean()
    l1 = ((pooled(fs, 1) - pooled(ft, 1)) ** 2).mean()
    expected = (full + 0.5 * l2 + 0.25 * l1) / 1.75  # level 4 is skipped: not smaller than 4
    assert hcl_loss([fs], [ft]).item() == pytest.approx(expected.item(), rel=1e-5)
    assert hcl_loss([fs, fs], [fs.clone(), fs.clone()]).item() == 0.0


def test_reviewkd_fuses_to_the_teacher_shapes_and_warms_up():
    torch.manual_seed(13)
    teacher, student = Conv(8), Conv(4)
    b = conv_batch()
    d = create("reviewkd", student=student, teacher=teacher, example=b["x"])
    term = d.terms[0]
    assert term.out_sizes == [(8, 8), (4, 4)]
    assert term.abfs[0].attention is not None and term.abfs[1].attention is None  # deepest: nothing to fuse
    d.set_epoch(0, 40)
    first = d(b)["loss_reviewkd"]
    d.set_epoch(19, 40)
    full = d(b)["loss_reviewkd"]
    assert first.item() == pytest.approx(full.item() / 20, rel=1e-5)


def test_reviewkd_refuses_vectors():
    student = create_model("mlp", 4, (3, 8, 8), hidden=(16, 16))
    with pytest.raises(ShapeError, match="body.relu"):
        create("reviewkd", student=student, teacher=Conv(8), example=conv_batch()["x"],
               teacher_layers=["act1", "act2"])


# -- 1-D feature maps -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sp", "pkt", "cc", "vid", "crd", "dkd", "dist", "reviewkd"])
def test_methods_work_on_1d_maps(name):
    torch.manual_seed(14)
    teacher = create_model("cnn1d", 4, (1, 40), channels=12)
    student = create_model("cnn1d", 4, (1, 40), channels=5)
    b = {"x": torch.randn(6, 1, 40), "y": torch.randint(0, 4, (6,)), "index": torch.arange(6)}
    extra = {"num_data": 6} if name == "crd" else {}
    d = create(name, student=student, teacher=teacher, example=b["x"], **extra)
    out = d(b)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(p.grad is not None for p in d.terms[0].parameters())
    assert all(p.grad is None for p in teacher.parameters())
    # the distillation term alone reaches the student's first layer; feature terms stop
    # before the classifier head, logit terms go through it
    student.zero_grad(set_to_none=True)
    sum(v for k, v in d(b).items() if k.startswith(f"loss_{name}")).backward()
    assert student.conv1.weight.grad.abs().sum() > 0
    if name in ("dkd", "dist"):
        assert student.head.weight.grad.abs().sum() > 0
    else:
        assert student.head.weight.grad is None
