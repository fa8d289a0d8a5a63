"""Property and worked-number tests of the newer logit methods: logit standardization
(LSKD) on kd/dkd/mlkd, MLKD, CTKD, SKD and DIST+ (the shared contract is in
test_methods_contract.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdistill.cache.teacher import TopKTeacherOutput
from kdistill.errors import ConfigError
from kdistill.methods import Context, create
from kdistill.methods.ctkd import cosine_lambda
from kdistill.methods.dist import dist_loss
from kdistill.methods.dist_plus import feature_relations
from kdistill.methods.mlkd import confidence_masks
from kdistill.methods.skd import direction_loss
from kdistill.teachers import TeacherOutput

C = 5


class Head(nn.Module):
    """A student that returns its own logits parameter: the loss's gradient is the logits'."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.z = nn.Parameter(logits.clone())
        self.fc = nn.Linear(1, 1)  # unused; the contract only needs a module

    def forward(self, x):
        return self.z


def term(name: str, example=None, **kw):
    d = create(name, student=nn.Linear(4, C), teacher=nn.Linear(4, C), example=example, **kw)
    return d.terms[0]


def ctx(z_s: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor | None = None, epoch: int = 0) -> Context:
    y = torch.zeros(len(z_s), dtype=torch.long) if y is None else y
    return Context({"x": torch.zeros(len(z_s), 4), "y": y}, z_s, {}, TeacherOutput(z_t), epoch, 10)


def total(out) -> torch.Tensor:
    return sum(out.values()) if isinstance(out, dict) else out


def logits(n=6, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, C, generator=g) * scale


# -- logit standardization -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["kd", "dkd", "mlkd"])
def test_standardized_losses_ignore_each_sides_logit_shift_and_scale(name):
    z_s, z_t = logits(seed=1), logits(seed=2)
    y = torch.arange(6) % C
    # (MLKD's confidence masks read the teacher's raw probabilities, as the official code: off here)
    extra = {"confidence_percentile": 100.0} if name == "mlkd" else {}
    m = term(name, standardize=True, **extra)
    base = total(m(ctx(z_s, z_t, y)))
    shift_s, shift_t = torch.randn(6, 1) * 10, torch.randn(6, 1) * 10
    scale_s, scale_t = torch.rand(6, 1) * 5 + 0.1, torch.rand(6, 1) * 5 + 0.1
    moved = total(m(ctx(z_s * scale_s + shift_s, z_t * scale_t + shift_t, y)))
    assert base > 0
    torch.testing.assert_close(moved, base, rtol=1e-4, atol=1e-5)
    # without standardization the same change does move the loss
    plain = term(name, **extra)
    assert not torch.isclose(total(plain(ctx(z_s * scale_s, z_t, y))), total(plain(ctx(z_s, z_t, y))), rtol=1e-3)


def test_standardized_kd_worked_number():
    # z_s = [1, 2, 3] and z_t = [3, 2, 1] standardize (mean 2, sample std 1) to [-1, 0, 1] and
    # [1, 0, -1]; at the base temperature 2 the student's probabilities are e^{-.5}, 1, e^{.5}
    # over their sum and the teacher's the same reversed
    z_s, z_t = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[3.0, 2.0, 1.0]])
    m = create("kd", student=nn.Linear(1, 3), teacher=nn.Linear(1, 3), standardize=True).terms[0]
    assert m.temperature == 2.0
    s = math.exp(-0.5) + 1 + math.exp(0.5)
    p_s = [math.exp(-0.5) / s, 1 / s, math.exp(0.5) / s]
    p_t = p_s[::-1]
    want = 4 * sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))  # T^2 = 4
    got = m(Context({"x": torch.zeros(1, 1), "y": torch.zeros(1, dtype=torch.long)}, z_s, {}, TeacherOutput(z_t)))
    assert got.item() == pytest.approx(want, rel=1e-5)  # = 4 * (e^.5 - e^-.5) / s ~ 1.8487
    assert want == pytest.approx(4 * (math.exp(0.5) - math.exp(-0.5)) / s, rel=1e-12)


def test_standardization_temperature_defaults_and_refusals():
    assert term("kd").temperature == 4.0 and term("kd", standardize=True).temperature == 2.0
    assert term("dkd").temperature == 4.0 and term("dkd", standardize=True).temperature == 2.0
    assert term("kd", standardize=True, temperature=3.0).temperature == 3.0
    with pytest.raises(ConfigError, match="temperature"):
        term("kd", temperature=-1.0)
    # a top-k teacher cache knows only k logits: standardizing them would be wrong, so refused
    z = logits(2)
    top = TopKTeacherOutput.from_topk(*z.topk(2, -1), C)
    c = Context({"x": torch.zeros(2, 4), "y": torch.zeros(2, dtype=torch.long)}, z, {}, top)
    with pytest.raises(ConfigError, match="top-k"):
        term("kd", standardize=True)(c)
    assert torch.isfinite(term("kd")(c))  # the plain loss still reads the top-k cache


# -- MLKD ------------------------------------------------------------------------------------
def test_mlkd_at_one_level_one_temperature_without_masks_is_kd():
    z_t = logits(seed=3)
    kd_student, ml_student = Head(logits(seed=4)), Head(logits(seed=4))
    kd = term("kd", temperature=3.0)
    ml = term("mlkd", temperatures=[3.0], batch_weight=0.0, class_weight=0.0, confidence_percentile=100.0)
    a = kd(ctx(kd_student(None), z_t))
    b = ml(ctx(ml_student(None), z_t))
    assert set(b) == {"instance"}
    torch.testing.assert_close(b["instance"], a)
    a.backward(), b["instance"].backward()
    torch.testing.assert_close(ml_student.z.grad, kd_student.z.grad)


def test_mlkd_is_zero_when_the_student_predicts_like_the_teacher_and_positive_otherwise():
    z = logits(seed=5)
    out = term("mlkd", confidence_percentile=100.0)(ctx(z.clone(), z))
    assert set(out) == {"instance", "batch", "class"}
    assert all(abs(v.item()) < 1e-6 for v in out.values())
    out = term("mlkd", confidence_percentile=100.0)(ctx(logits(seed=6), z))
    assert all(v.item() > 0 for v in out.values())


def test_mlkd_confidence_masks_keep_the_less_confident_half():
    # top probabilities rise with the logit gap; the median of four is between the 2nd and 3rd
    gaps = torch.tensor([0.0, 1.0, 2.0, 3.0])
    z_t = torch.zeros(4, C)
    z_t[:, 0] = gaps
    sample_mask, class_mask = confidence_masks(z_t, 50.0)
    assert sample_mask.tolist() == [True, True, False, False]
    assert class_mask.shape == (C,) and class_mask[0].item() is False  # class 0 collects most probability
    assert confidence_masks(z_t, 100.0)[0].all()


def test_mlkd_batch_and_class_levels_worked_numbers():
    # one temperature (T=1), no masking; two samples, two classes, with probabilities known
    # exactly: logits [0, 0] -> (1/2, 1/2); [log 3, 0] -> (3/4, 1/4)
    z_t = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    z_s = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    m = create("mlkd", student=nn.Linear(1, 2), teacher=nn.Linear(1, 2), temperatures=[1.0],
               confidence_percentile=100.0).terms[0]
    out = m(Context({"x": torch.zeros(2, 1), "y": torch.zeros(2, dtype=torch.long)}, z_s, {}, TeacherOutput(z_t)))
    # batch Gram P P^T: teacher [[1/2, 1/2], [1/2, 5/8]], student all 1/2 -> diff only at (2,2) = 1/8
    assert out["batch"].item() == pytest.approx((1 / 8) ** 2 / 2, rel=1e-5)
    # class Gram P^T P: teacher [[13/16, 7/16], [7/16, 5/16]], student all 1/2 -> (25 + 1 + 1 + 9) / 256 / 2
    want = ((13 / 16 - 1 / 2) ** 2 + 2 * (7 / 16 - 1 / 2) ** 2 + (5 / 16 - 1 / 2) ** 2) / 2
    assert want == pytest.approx(36 / 512)
    assert out["class"].item() == pytest.approx(want, rel=1e-5)


def test_mlkd_refuses_bad_settings():
    with pytest.raises(ConfigError, match="temperatures"):
        term("mlkd", temperatures=[])
    with pytest.raises(ConfigError, match="confidence_percentile"):
        term("mlkd", confidence_percentile=0.0)


# -- CTKD ------------------------------------------------------------------------------------
def test_ctkd_curriculum_is_a_half_cosine_from_lambda_min_to_lambda_max():
    assert cosine_lambda(0, 10) == pytest.approx(0.0, abs=1e-12)
    assert cosine_lambda(5, 10) == pytest.approx(0.5)
    assert cosine_lambda(10, 10) == pytest.approx(1.0) and cosine_lambda(30, 10) == pytest.approx(1.0)
    assert cosine_lambda(2, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 1.2)))
    assert cosine_lambda(3, 0, 0.2, 0.7) == 0.7


@pytest.mark.parametrize("epoch,lam", [(5, 0.5), (12, 1.0)])
def test_ctkd_reverses_the_temperatures_gradient_and_starts_as_kd(epoch, lam):
    z_s, z_t = logits(seed=7), logits(seed=8)
    m = term("ctkd")
    out = m(ctx(z_s, z_t, epoch=epoch))
    # the forward is KD at the starting temperature 4
    assert out.item() == pytest.approx(term("kd")(ctx(z_s, z_t)).item(), rel=1e-5)
    out.backward()
    # the same loss with a plain (unreversed) theta
    theta = m.theta.detach().clone().requires_grad_(True)
    t = 1.0 + 20.0 * torch.sigmoid(theta)
    lp_s, lp_t = F.log_softmax(z_s / t, -1), F.log_softmax(z_t / t, -1)
    plain = ((lp_t.exp() * (lp_t - lp_s)).sum(-1) * t * t).mean()
    (g,) = torch.autograd.grad(plain, theta)
    assert g.abs().item() > 1e-4
    assert m.theta.grad.item() == pytest.approx(-lam * g.item(), rel=1e-4)


def test_ctkd_temperature_is_trained_by_the_optimizer_towards_a_harder_loss():
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, C), nn.Linear(4, C)
    d = create("ctkd", student=student, teacher=teacher, curriculum_epochs=0)  # lambda = 1 at once
    m = d.terms[0]
    assert any(p is m.theta for p in d.trainable_parameters())
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.5)
    b = {"x": torch.randn(16, 4), "y": torch.randint(0, C, (16,))}
    with torch.no_grad():
        z_s, z_t = student(b["x"]), teacher(b["x"])

    def kd_at(theta: torch.Tensor) -> float:
        t = 1 + 20 * torch.sigmoid(theta.detach())
        lp_s, lp_t = F.log_softmax(z_s / t, -1), F.log_softmax(z_t / t, -1)
        return float(((lp_t.exp() * (lp_t - lp_s)).sum(-1) * t * t).mean())

    before = m.theta.detach().clone()
    d(b)["loss"].backward()
    opt.step()
    assert m.theta.item() != before.item()
    # the optimizer moved the temperature so that the KD loss at the same logits *rises*
    assert kd_at(m.theta) > kd_at(before)


def test_ctkd_instance_mode_gives_one_bounded_temperature_per_sample():
    m = term("ctkd", mode="instance", t_min=2.0, t_range=3.0, init_temperature=3.0, example=torch.zeros(2, 4))
    t = m.temperature(ctx(logits(seed=9), logits(seed=10)))
    assert t.shape == (6,) and (t > 2.0).all() and (t < 5.0).all()
    assert t.detach().sub(3.0).abs().max() < 0.05  # starts near init_temperature
    with pytest.raises(ConfigError, match="init_temperature"):
        term("ctkd", init_temperature=30.0)


# -- SKD -------------------------------------------------------------------------------------
def test_skd_direction_ignores_each_samples_logit_norm_and_vanishes_at_the_teacher():
    z_s, z_t = logits(8, seed=11), logits(8, seed=12)
    base = direction_loss(z_s, z_t)
    assert base > 0
    torch.testing.assert_close(direction_loss(z_s * (torch.rand(8, 1) * 4 + 0.5), z_t), base, rtol=1e-4, atol=1e-6)
    assert direction_loss(z_t * 3.0, z_t).item() < 1e-5
    out = term("skd")(ctx(z_t.clone(), z_t))
    assert abs(out["instance"].item()) < 1e-6 and out["direction"].item() < 1e-5


def test_skd_direction_worked_number_against_an_explicit_mahalanobis():
    z_s, z_t = logits(4, seed=13), logits(4, seed=14)
    ns, nt = (z_s / z_s.norm(dim=1, keepdim=True)).double(), (z_t / z_t.norm(dim=1, keepdim=True)).double()
    d = (ns @ ns.T - nt @ nt.T) / C
    mean = d.mean(0)
    cov = sum(torch.outer(r - mean, r - mean) for r in d) / 3 + 0.1 * torch.eye(4, dtype=torch.float64)
    inv = torch.linalg.inv(cov)
    want = sum(math.sqrt(float(r @ inv @ r)) for r in d) / 4
    assert direction_loss(z_s, z_t, 0.1).item() == pytest.approx(want, rel=1e-4)


# -- DIST+ -----------------------------------------------------------------------------------
def test_dist_plus_feature_relations_vanish_for_equal_maps_and_follow_pearson():
    f = torch.randn(3, 6, 4, 4)
    rel = feature_relations(f, f.clone())
    assert all(abs(v.item()) < 1e-5 for v in rel.values())
    rel = feature_relations(torch.randn(3, 6, 4, 4), f)
    assert all(0 < v.item() < 2 for v in rel.values())
    # the larger map is pooled to the smaller one
    assert feature_relations(F.interpolate(f, scale_factor=2.0), f)["inter"].item() < 1e-5


def test_dist_plus_logit_part_is_dist_with_its_weights():
    from test_methods_contract import PAIRS, batch

    torch.manual_seed(0)
    teacher, student = PAIRS["resnet"]()
    b = batch()
    d = create("dist_plus", student=student, teacher=teacher, example=b["x"])
    assert d.weights == [2.0, 1.0]  # torchdistill's term weight 2, CE 1
    out = d(b)
    with torch.no_grad():
        ref = dist_loss(student(b["x"]), teacher(b["x"]), 2.0, 2.0, 1.0)
    assert out["loss_dist_plus_inter"].item() == pytest.approx(2.0 * ref["inter"].item(), rel=1e-4)
    assert out["loss_dist_plus_intra"].item() == pytest.approx(2.0 * ref["intra"].item(), rel=1e-4)
    assert {"loss_dist_plus_feat_inter", "loss_dist_plus_feat_intra"} <= set(out)
    assert not isinstance(d.terms[0].connector, nn.Identity)  # 32 student channels -> 64 teacher channels
