"""The "what to match" methods: FitNets, AT, NST, FT, AB, FSP, RKD, and `kdistill list layers`.

Each pure loss is checked against the formula written out independently here (explicit
loops over numpy arrays) on a small fixed input, and against the properties the papers
state: zero for identical features, invariance to scale, symmetry, and that the student (and
never the teacher) receives gradients.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from kdistill.errors import ConfigError, ShapeError
from kdistill.methods import create
from kdistill.methods.ab import ab_loss
from kdistill.methods.at import at_loss, attention_map, gradient_attention_loss
from kdistill.methods.fsp import fsp_loss, fsp_matrix
from kdistill.methods.ft import factor_loss
from kdistill.methods.nst import nst_loss
from kdistill.methods.rkd import rkd_angle_loss, rkd_distance_loss
from kdistill.models import create_model
from kdistill.teachers import EnsembleTeacher


class TinyNet(nn.Module):
    """Three conv stages on 3x16x16 inputs (16, 8, 4 pixels), no BatchNorm so a copy of the
    student as teacher gives bit-identical features in train mode."""

    def __init__(self, widths=(4, 8, 8), num_classes=5):
        super().__init__()
        w1, w2, w3 = widths
        self.conv1, self.act1 = nn.Conv2d(3, w1, 3, padding=1), nn.ReLU()
        self.conv2, self.act2 = nn.Conv2d(w1, w2, 3, stride=2, padding=1), nn.ReLU()
        self.conv3, self.act3 = nn.Conv2d(w2, w3, 3, stride=2, padding=1), nn.ReLU()
        self.head = nn.Linear(w3, num_classes)
        self.default_taps = {"stages": ["act1", "act2", "act3"], "embedding": "head:input"}

    def forward(self, x):
        x = self.act1(self.conv1(x))
        x = self.act2(self.conv2(x))
        x = self.act3(self.conv3(x))
        return self.head(x.mean((2, 3)))


def batch_of(x, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x": x, "y": torch.randint(0, classes, (len(x),), generator=g), "index": torch.arange(len(x))}


@pytest.fixture
def images():
    return torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def fixed(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ----------------------------------------------------------------------------------- AT
def test_at_matches_hand_computed_formula():
    s, t = fixed((2, 3, 2, 2), 0), fixed((2, 5, 2, 2), 1)  # channel counts may differ
    a, b = s.numpy(), t.numpy()
    total = 0.0

    def q(f, n, channels):  # mean over channels of |A|^2, positions in row-major order
        return np.array([sum(f[n, c, h, w] ** 2 for c in range(channels)) / channels
                         for h in range(2) for w in range(2)])

    for n in range(2):
        q_s, q_t = q(a, n, 3), q(b, n, 5)
        q_s, q_t = q_s / math.sqrt((q_s**2).sum()), q_t / math.sqrt((q_t**2).sum())
        total += ((q_s - q_t) ** 2).sum()
    assert at_loss(s, t).item() == pytest.approx(total / (2 * 4), rel=1e-6)


def test_at_invariant_to_feature_scale_and_zero_for_identical():
    s, t = fixed((3, 4, 5, 5), 2), fixed((3, 6, 5, 5), 3)
    base = at_loss(s, t).item()
    assert base > 0
    assert at_loss(7.5 * s, t).item() == pytest.approx(base, rel=1e-6)
    assert at_loss(s, 0.01 * t).item() == pytest.approx(base, rel=1e-6)
    assert at_loss(s, s).item() == pytest.approx(0.0, abs=1e-12)
    # unit L2 norm per sample
    assert torch.allclose(attention_map(s).norm(dim=1), torch.ones(3, dtype=torch.float32))


def test_at_pools_the_larger_map():
    s, t = fixed((2, 3, 8, 8), 4), fixed((2, 3, 4, 4), 5)
    assert at_loss(s, t).item() == pytest.approx(at_loss(F.avg_pool2d(s, 2), t).item(), rel=1e-6)


def test_at_gradient_mode_trains_student_and_leaves_teacher_untouched(images):
    torch.manual_seed(0)
    student, teacher = TinyNet(), TinyNet((8, 16, 16))
    d = create("at", student, teacher, example=images[:2], mode="gradient")
    batch = batch_of(images)
    out = d(batch)
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    g_at = torch.autograd.grad(d(batch)["loss_at"], list(student.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in g_at)

    # the value: input gradients computed here independently, then the normalised L2 formula
    def input_grad(net):
        x = images.clone().requires_grad_(True)
        F.cross_entropy(net(x), batch["y"], reduction="sum").backward()
        return x.grad.flatten(1).double().numpy()

    teacher_copy = copy.deepcopy(teacher).requires_grad_(True)
    gs, gt = input_grad(copy.deepcopy(student)), input_grad(teacher_copy)
    unit_s = [gs[n] / np.linalg.norm(gs[n]) for n in range(6)]
    unit_t = [gt[n] / np.linalg.norm(gt[n]) for n in range(6)]
    expected = np.mean([(unit_s[n] - unit_t[n]) ** 2 for n in range(6)])
    assert out["loss_at"].item() == pytest.approx(1000 * expected, rel=1e-4)


def test_at_gradient_mode_zero_for_identical_networks_and_handles_unlabelled(images):
    torch.manual_seed(0)
    student = TinyNet()
    d = create("at", student, copy.deepcopy(student), example=images[:2], mode="gradient")
    batch = batch_of(images)
    batch["y"][:3] = -1  # unlabelled transfer samples take the teacher's prediction
    assert d(batch)["loss_at"].item() == pytest.approx(0.0, abs=1e-9)
    g = torch.randn(4, 3, 16, 16)
    assert gradient_attention_loss(g, 3 * g).item() == pytest.approx(0.0, abs=1e-12)


def test_at_gradient_mode_refuses_an_ensemble(images):
    ens = EnsembleTeacher([TinyNet(), TinyNet()])
    with pytest.raises(ConfigError, match="single teacher"):
        create("at", TinyNet(), ens, example=images[:2], mode="gradient")


def test_at_on_vectors_raises_naming_both_layers():
    s, t = create_model("mlp", 10, (1, 8, 8), hidden=(16,)), create_model("mlp", 10, (1, 8, 8), hidden=(32,))
    with pytest.raises(ShapeError, match="body.relu1"):
        create("at", s, t, example=torch.randn(2, 1, 8, 8))


# ----------------------------------------------------------------------------------- NST
def test_nst_matches_hand_computed_mmd():
    s, t = fixed((2, 3, 2, 3), 6), fixed((2, 4, 2, 3), 7)
    a, b = s.flatten(2).numpy(), t.flatten(2).numpy()
    total = 0.0
    for n in range(2):
        fs = [a[n, c] / np.linalg.norm(a[n, c]) for c in range(3)]
        ft = [b[n, c] / np.linalg.norm(b[n, c]) for c in range(4)]
        k = lambda u, v: float(u @ v) ** 2  # noqa: E731  (polynomial kernel, d=2, c=0)
        total += (
            sum(k(x, y) for x in ft for y in ft) / 16
            + sum(k(x, y) for x in fs for y in fs) / 9
            - 2 * sum(k(x, y) for x in fs for y in ft) / 12
        )
    assert nst_loss(s, t).item() == pytest.approx(total / 2, rel=1e-6)


def test_nst_zero_for_identical_positive_otherwise_and_equals_second_moment_gap():
    s, t = fixed((3, 5, 4, 4), 8), fixed((3, 7, 4, 4), 9)
    assert nst_loss(s, s).item() == pytest.approx(0.0, abs=1e-7)
    assert nst_loss(s, t).item() > 1e-3
    # with k(x,y) = (x.y)^2, MMD^2 = ||mean_j s_j s_j^T - mean_i t_i t_i^T||_F^2
    fs, ft = F.normalize(s.flatten(2), dim=2), F.normalize(t.flatten(2), dim=2)
    m_s = torch.einsum("ncp,ncq->npq", fs, fs) / 5
    m_t = torch.einsum("ncp,ncq->npq", ft, ft) / 7
    assert nst_loss(s, t).item() == pytest.approx((m_s - m_t).pow(2).sum((1, 2)).mean().item(), rel=1e-6)
    # channel order and per-channel positive scale do not matter
    assert nst_loss(s[:, torch.randperm(5)] * torch.rand(1, 5, 1, 1) + 0, t).item() == pytest.approx(
        nst_loss(s, t).item(), rel=1e-6
    )


# ----------------------------------------------------------------------------------- FSP
def test_fsp_matrix_hand_computed_and_shape():
    a, b = fixed((2, 3, 2, 2), 10), fixed((2, 4, 2, 2), 11)
    g = fsp_matrix(a, b)
    assert g.shape == (2, 3, 4)
    x, y = a.numpy(), b.numpy()
    for n in range(2):
        for i in range(3):
            for j in range(4):
                v = sum(x[n, i, h, w] * y[n, j, h, w] for h in range(2) for w in range(2)) / 4
                assert g[n, i, j].item() == pytest.approx(v, rel=1e-5)


def test_fsp_of_a_feature_with_itself_is_symmetric_psd():
    a = fixed((3, 6, 5, 5), 12)
    g = fsp_matrix(a, a).double()
    assert torch.allclose(g, g.transpose(1, 2), atol=1e-6)
    assert torch.linalg.eigvalsh(g).min().item() >= -1e-6


def test_fsp_pools_within_a_pair_and_loss_values():
    a, b = fixed((2, 3, 8, 8), 13), fixed((2, 4, 4, 4), 14)
    assert torch.allclose(fsp_matrix(a, b), fsp_matrix(F.avg_pool2d(a, 2), b), atol=1e-6)
    s = [fixed((2, 3, 4, 4), 15), fixed((2, 4, 2, 2), 16), fixed((2, 2, 2, 2), 17)]
    t = [fixed((2, 3, 4, 4), 18), fixed((2, 4, 2, 2), 19), fixed((2, 2, 2, 2), 20)]
    expected = sum(
        ((fsp_matrix(s[i], s[i + 1]) - fsp_matrix(t[i], t[i + 1])) ** 2).mean().item() for i in range(2)
    )
    assert fsp_loss(s, t).item() == pytest.approx(expected, rel=1e-6)
    assert fsp_loss(s, s).item() == 0.0


def test_fsp_init_stage_trains_the_student_towards_the_teacher_flow(images):
    torch.manual_seed(0)
    s, t = TinyNet(), TinyNet((8, 16, 16))
    # the paper's and the CRD code's recipe by default: a 30-epoch first stage, zero main-stage weight
    default = create("fsp", s, t, example=images[:2])
    assert default.terms[0].first_phase().epochs == 30 and default.weights[0] == 0.0
    assert create("fsp", s, t, example=images[:2], init_epochs=0).terms[0].first_phase() is None
    d = create("fsp", s, t, example=images[:2], init_epochs=1)
    term = d.terms[0]
    stage = term.first_phase()
    ids = {id(p) for p in stage.params}
    assert all(id(p) in ids for m in (s.conv1, s.conv2, s.conv3, term.connectors) for p in m.parameters())
    assert all(id(p) not in ids for p in s.head.parameters())
    opt = torch.optim.Adam(stage.params, lr=1e-2)
    batch = batch_of(images)
    d.train()
    first = stage.loss(d.context(batch)).item()
    for _ in range(20):
        loss = stage.loss(d.context(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert stage.loss(d.context(batch)).item() < 0.5 * first


def test_fsp_needs_two_stages(images):
    with pytest.raises(ConfigError, match="two stages"):
        create("fsp", TinyNet(), TinyNet(), example=images[:2], student_layers=["act3"],
               teacher_layers=["act3"])


# ----------------------------------------------------------------------------------- RKD
def huber(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def test_rkd_distance_and_angle_match_hand_computed():
    s, t = fixed((4, 3), 21), fixed((4, 5), 22)
    a, b = s.numpy(), t.numpy()
    pairs = [(i, j) for i in range(4) for j in range(4) if i != j]
    ds = {p: np.linalg.norm(a[p[0]] - a[p[1]]) for p in pairs}
    dt = {p: np.linalg.norm(b[p[0]] - b[p[1]]) for p in pairs}
    mu_s, mu_t = np.mean(list(ds.values())), np.mean(list(dt.values()))
    dist = np.mean([huber(ds[p] / mu_s - dt[p] / mu_t) for p in pairs])
    assert rkd_distance_loss(s, t).item() == pytest.approx(dist, rel=1e-5)

    def cos_at(e, i, j, k):
        u, v = e[i] - e[j], e[k] - e[j]
        return float(u @ v) / (np.linalg.norm(u) * np.linalg.norm(v))

    triplets = [(i, j, k) for i in range(4) for j in range(4) for k in range(4) if i != j and k != j]
    ang = np.mean([huber(cos_at(a, *tr) - cos_at(b, *tr)) for tr in triplets])
    assert rkd_angle_loss(s, t).item() == pytest.approx(ang, rel=1e-5)


def test_rkd_invariant_to_uniform_scaling_and_rotation():
    s, t = fixed((8, 6), 23), fixed((8, 10), 24)
    d0, a0 = rkd_distance_loss(s, t).item(), rkd_angle_loss(s, t).item()
    assert d0 > 0 and a0 > 0
    for scale in (0.01, 3.0, 250.0):
        assert rkd_distance_loss(scale * s, t).item() == pytest.approx(d0, rel=1e-5)
        assert rkd_angle_loss(scale * s, t).item() == pytest.approx(a0, rel=1e-5)
        assert rkd_distance_loss(s, scale * t).item() == pytest.approx(d0, rel=1e-5)
    q, _ = torch.linalg.qr(fixed((6, 6), 25))
    assert rkd_distance_loss(s @ q, t).item() == pytest.approx(d0, rel=1e-5)
    assert rkd_angle_loss(s @ q + 4.0, t).item() == pytest.approx(a0, rel=1e-5)
    assert rkd_distance_loss(t, t).item() == pytest.approx(0.0, abs=1e-10)
    assert rkd_angle_loss(t, t).item() == pytest.approx(0.0, abs=1e-10)


def test_rkd_finite_gradients_with_coincident_samples():
    s = fixed((5, 4), 26).float()
    s[1] = s[0]  # two identical embeddings: zero distance, undefined direction
    s.requires_grad_(True)
    (rkd_distance_loss(s, fixed((5, 3), 27)) + rkd_angle_loss(s, fixed((5, 3), 27))).backward()
    assert torch.isfinite(s.grad).all()


def test_rkd_term_returns_weighted_parts(images):
    torch.manual_seed(0)
    s, t = TinyNet(), TinyNet((8, 16, 16))
    out = create("rkd", s, t, example=images[:2])(batch_of(images))
    with torch.no_grad():
        e_s = F.relu(s.conv3(F.relu(s.conv2(F.relu(s.conv1(images)))))).mean((2, 3))
        e_t = F.relu(t.conv3(F.relu(t.conv2(F.relu(t.conv1(images)))))).mean((2, 3))
    assert out["loss_rkd_distance"].item() == pytest.approx(25 * rkd_distance_loss(e_s, e_t).item(), rel=1e-5)
    assert out["loss_rkd_angle"].item() == pytest.approx(50 * rkd_angle_loss(e_s, e_t).item(), rel=1e-5)


# ----------------------------------------------------------------------------------- AB
def test_ab_loss_hand_computed():
    s = torch.tensor([[1.5, 0.2, -0.4, -2.0, 0.9, -0.9]])
    t = torch.tensor([[0.3, 2.0, 1.0, -1.0, -0.1, 0.0]])
    expected = []
    for sv, tv in zip(s[0].tolist(), t[0].tolist(), strict=True):
        if tv > 0:  # should be active: penalise responses below +m
            expected.append(max(0.0, 1.0 - sv) ** 2)
        else:  # should be inactive: penalise responses above -m
            expected.append(max(0.0, 1.0 + sv) ** 2)
    assert ab_loss(s, t, 1.0).item() == pytest.approx(sum(expected) / 6, rel=1e-6)


def test_ab_zero_when_signs_agree_beyond_margin():
    t = fixed((4, 3, 5, 5), 28)
    beyond = 1.0 + torch.rand(t.shape, dtype=torch.float64)
    s = torch.where(t > 0, beyond, -beyond)
    assert ab_loss(s, t, 1.0).item() == 0.0
    inside = torch.where(t > 0, 0.5 * beyond - 0.5, -(0.5 * beyond - 0.5))  # right sign, within margin
    assert ab_loss(inside, t, 1.0).item() > 0


def test_ab_taps_pre_activations_and_init_stage_covers_student_up_to_deepest_tap(images):
    torch.manual_seed(0)
    s, t = TinyNet(), TinyNet((8, 16, 16))
    d = create("ab", s, t, example=images[:2])
    term = d.terms[0]
    assert term.student_taps == ["act1:input", "act2:input", "act3:input"]
    ctx = d.context(batch_of(images))
    assert (ctx.teacher.features["act2:input"] < 0).any()  # pre-ReLU: negatives survive
    stage = term.first_phase()
    assert stage.name == "ab_init" and stage.epochs == 30
    ids = {id(p) for p in stage.params}
    assert all(id(p) in ids for m in (s.conv1, s.conv2, s.conv3) for p in m.parameters())
    assert all(id(p) not in ids for p in s.head.parameters())
    assert all(id(p) in ids for p in term.connectors.parameters())


# ----------------------------------------------------------------------------------- FT
def test_factor_loss_hand_computed_and_scale_invariant():
    s, t = fixed((2, 2, 3, 3), 29), fixed((2, 2, 3, 3), 30)
    a, b = s.flatten(1).numpy(), t.flatten(1).numpy()
    expected = np.mean([np.abs(a[n] / np.linalg.norm(a[n]) - b[n] / np.linalg.norm(b[n])) for n in range(2)])
    assert factor_loss(s, t, 1.0).item() == pytest.approx(expected, rel=1e-6)
    assert factor_loss(4.0 * s, t).item() == pytest.approx(expected, rel=1e-6)
    assert factor_loss(s, s).item() == 0.0


def test_ft_paraphraser_stage_learns_and_main_stage_freezes_it(images):
    torch.manual_seed(0)
    s, t = TinyNet(), TinyNet((8, 16, 16))
    d = create("ft", s, t, example=images[:2])
    term = d.terms[0]
    assert term.student_taps == ["act3"] and term.teacher_taps == ["act3"]
    assert term.paraphraser.encoder[-3].out_channels == 8  # k = 0.5 of the teacher's 16
    stage = term.first_phase()
    assert {id(p) for p in stage.params} == {id(p) for p in term.paraphraser.parameters()}
    opt = torch.optim.Adam(stage.params, lr=1e-2)
    batch = batch_of(images)
    d.train()
    ctx = d.context(batch)  # the stage reads only the frozen teacher's feature
    losses = []
    for _ in range(15):
        loss = stage.loss(ctx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]
    d.zero_grad()
    d(batch)["loss_ft"].backward()
    assert all(p.grad is None for p in term.paraphraser.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in term.translator.parameters())
    assert s.conv1.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------- FitNet
def test_fitnet_prestage_trains_up_to_guided_layer_and_reduces_hint_loss(images):
    torch.manual_seed(0)
    s, t = TinyNet(), TinyNet((8, 16, 16))
    assert create("fitnet", s, t, example=images[:2]).terms[0].first_phase() is None  # CRD default
    d = create("fitnet", s, t, example=images[:2], hint_epochs=1)
    term = d.terms[0]
    assert term.student_taps == ["act2"] and term.teacher_taps == ["act2"]  # middle stage
    stage = term.first_phase()
    ids = {id(p) for p in stage.params}
    assert all(id(p) in ids for m in (s.conv1, s.conv2, term.regressors) for p in m.parameters())
    assert all(id(p) not in ids for m in (s.conv3, s.head) for p in m.parameters())
    frozen = [p.detach().clone() for m in (s.conv3, s.head) for p in m.parameters()]
    opt = torch.optim.Adam(stage.params, lr=1e-2)
    batch = batch_of(images)
    d.train()
    first = None
    for _ in range(25):
        loss = stage.loss(d.context(batch))
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert stage.loss(d.context(batch)).item() < 0.5 * first
    after = [p for m in (s.conv3, s.head) for p in m.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(frozen, after, strict=True))


# ------------------------------------------------------------- whole terms, 2-D and 1-D
def nets(kind):
    torch.manual_seed(0)
    if kind == "conv2d":
        x = torch.randn(6, 3, 16, 16)
        return TinyNet(), TinyNet((8, 16, 16)), x, 5
    x = torch.randn(6, 1, 40)
    return create_model("cnn1d", 10, (1, 40)), create_model("cnn1d", 10, (1, 40), channels=32), x, 10


@pytest.mark.parametrize("kind", ["conv2d", "cnn1d"])
@pytest.mark.parametrize("method", ["fitnet", "at", "nst", "fsp", "rkd"])
def test_term_is_zero_against_a_copy_and_trains_the_student_otherwise(method, kind):
    student, other, x, classes = nets(kind)
    batch = batch_of(x, classes)
    # fsp's main-stage weight defaults to 0 (the paper's two-stage recipe); test it as a joint term
    w = {"weight": 50.0} if method == "fsp" else {}
    same = create(method, student, copy.deepcopy(student), example=x[:2], **w)
    out = same(batch)
    parts = [v for k, v in out.items() if k.startswith(f"loss_{method}")]
    assert parts and all(abs(v.item()) < 1e-5 for v in parts)
    diff = create(method, student, other, example=x[:2], **w)
    total = sum(v for k, v in diff(batch).items() if k.startswith(f"loss_{method}"))
    assert total.item() > 1e-4
    grads = torch.autograd.grad(total, list(student.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in other.parameters())


@pytest.mark.parametrize("method", ["ft", "ab"])
def test_trained_part_terms_work_on_1d_maps(method):
    student, teacher, x, classes = nets("cnn1d")
    # ab's main-stage weight defaults to 0 (initialisation only, as in the paper); test it joint
    d = create(method, student, teacher, example=x[:2], **({"weight": 1.0} if method == "ab" else {}))
    loss = d(batch_of(x, classes))[f"loss_{method}"]
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert student.conv1.weight.grad.abs().sum() > 0


def test_one_named_side_pairs_with_the_other_sides_deepest_stages(images):
    d = create("at", TinyNet(), TinyNet(), example=images[:2], student_layers=["act1", "act2"])
    assert d.terms[0].student_taps == ["act1", "act2"] and d.terms[0].teacher_taps == ["act2", "act3"]
    with pytest.raises(ConfigError, match="declares only 3"):
        create("at", TinyNet(), TinyNet(), example=images[:2], teacher_layers=["act1", "act2", "act3", "conv3"])


def test_layer_choice_errors(images):
    with pytest.raises(ConfigError, match="same length"):
        create("nst", TinyNet(), TinyNet(), example=images[:2], student_layers=["act1", "act2"],
               teacher_layers=["act2"])
    with pytest.raises(ConfigError, match="example"):
        create("at", TinyNet(), TinyNet())
    with pytest.raises(ShapeError, match="conv9"):
        create("at", TinyNet(), TinyNet(), example=images[:2], student_layers=["conv9"],
               teacher_layers=["act1"])


# ----------------------------------------------------------------------------------- CLI
def cli_app():
    from kdistill.cli import app

    return app


def test_list_layers_gives_paths_types_and_output_shapes():
    res = CliRunner().invoke(cli_app(), ["list", "layers", "cnn1d", "--input-shape", "1,40", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    rows = {r["path"]: r for r in info["layers"]}
    # conv1 k5 s2 p1: (40 + 2 - 5) // 2 + 1 = 19; conv2/conv3 k3 s2 p1: 10, then 5
    assert rows["conv1"] == {"path": "conv1", "type": "Conv1d", "shape": [25, 19]}
    assert rows["act2"]["shape"] == [25, 10] and rows["act3"]["shape"] == [25, 5]
    assert rows["head"]["shape"] == [10]
    assert info["default_taps"]["stages"] == ["act1", "act2", "act3"]
    table = CliRunner().invoke(cli_app(), ["list", "layers", "mlp", "--input-shape", "1,8,8"])
    assert table.exit_code == 0 and "body.fc1" in table.output and "stage 1" in table.output


@pytest.mark.parametrize("shape", ["1,28,x", "0,4", ""])
def test_list_layers_rejects_bad_shapes(shape):
    res = CliRunner().invoke(cli_app(), ["list", "layers", "cnn1d", "--input-shape", shape])
    assert isinstance(res.exception, ConfigError)


def test_list_layers_wrong_input_shape_is_a_shape_error():
    res = CliRunner().invoke(cli_app(), ["list", "layers", "cnn1d", "--input-shape", "3,28,28"])
    assert isinstance(res.exception, ShapeError)
