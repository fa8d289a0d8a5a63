"""Schemes: tiny CPU runs of every scheme on synthetic data, and each scheme's mathematics."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdistill.config import validate_config
from kdistill.engine.checkpoint import load_weights
from kdistill.errors import ConfigError
from kdistill.models import create_model
from kdistill.schemes import SCHEMES, parse_settings, run_scheme
from kdistill.schemes.byot import SelfDistillNet, byot_losses, load_exit
from kdistill.schemes.dml import dml_losses
from kdistill.schemes.one import MultiBranch, one_losses
from kdistill.schemes.specialists import combine_specialists, confusion_clusters
from kdistill.schemes.transfer import munge, nearest_neighbours
from kdistill.teachers import EnsembleTeacher

CLASSES = 4
CHANCE = 1 / CLASSES


def config(scheme: dict, **extra) -> dict:
    base = {
        "data": {
            "name": "synthetic",
            "options": {
                "num_classes": CLASSES,
                "input_shape": [12],
                "n_train": 192,
                "n_test": 96,
                "noise": 0.7,
            },
            "batch_size": 64,
        },
        "student": {"model": "mlp", "kwargs": {"hidden": [12, 12]}},
        "teacher": {"model": "mlp", "kwargs": {"hidden": [24, 24]}},
        "train": {"epochs": 4, "lr": 0.02, "device": "cpu", "progress": False, "precision": "fp32"},
        "scheme": scheme,
    }
    base.update(extra)
    return base


def run(tmp_path, scheme: dict, **extra) -> dict:
    return run_scheme(validate_config(config(scheme, **extra)), run_dir=tmp_path / "run", log=lambda _: None)


def stage_results(tmp_path, name: str) -> dict:
    return json.loads((tmp_path / "run" / name / "results.json").read_text())


def test_ensemble_scheme_reports_members_ensemble_student(tmp_path):
    out = run(tmp_path, {"name": "ensemble", "members": 2, "combine": "mean_logit"})
    assert set(out["stages"]) == {"member0", "member1", "ensemble", "student"}
    for name in ("member0", "member1", "ensemble", "student"):
        res = stage_results(tmp_path, name)
        assert res["final"]["test"]["acc"] > CHANCE
    # members differ only in their initialisation: different starting weights, same data
    w0 = load_weights(tmp_path / "run" / "init" / "member0.safetensors")
    w1 = load_weights(tmp_path / "run" / "init" / "member1.safetensors")
    assert not torch.equal(w0["body.fc1.weight"], w1["body.fc1.weight"])
    m0, m1 = stage_results(tmp_path, "member0"), stage_results(tmp_path, "member1")
    assert m0["dataset"]["fingerprint"] == m1["dataset"]["fingerprint"] and m0["seed"] == m1["seed"]
    assert stage_results(tmp_path, "student")["teacher"]["combine"] == "mean_logit"
    assert json.loads((tmp_path / "run" / "results.json").read_text())["scheme"] == "ensemble"


class Fixed(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


def test_ensemble_combine_modes_match_hand_computation():
    a = torch.tensor([[2.0, 0.0, -1.0]])
    b = torch.tensor([[0.0, 1.0, 1.0]])
    batch = {"x": torch.zeros(1, 1)}
    pa, pb = a.softmax(-1), b.softmax(-1)
    mean_prob = EnsembleTeacher([Fixed(a), Fixed(b)], "mean_prob")(batch).logits
    torch.testing.assert_close(mean_prob.exp(), (pa + pb) / 2)
    mean_logit = EnsembleTeacher([Fixed(a), Fixed(b)], "mean_logit")(batch).logits
    torch.testing.assert_close(mean_logit, torch.tensor([[1.0, 0.5, 0.0]]))
    geo = EnsembleTeacher([Fixed(a), Fixed(b)], "geometric")(batch).logits.softmax(-1)
    g = (pa * pb).sqrt()
    torch.testing.assert_close(geo, g / g.sum())


def test_takd_chain_of_three_makes_three_stages_each_taught_by_the_previous(tmp_path):
    chain = [
        {"model": "mlp", "kwargs": {"hidden": [32]}},
        {"model": "mlp", "kwargs": {"hidden": [16]}},
        {"model": "mlp", "kwargs": {"hidden": [8]}},
    ]
    out = run(tmp_path, {"name": "takd", "chain": chain})
    dirs = sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith("stage"))
    assert dirs == ["stage0-mlp", "stage1-mlp", "stage2-mlp"]
    assert list(out["stages"]) == dirs
    for i, d in enumerate(dirs):
        res = stage_results(tmp_path, d)
        assert res["final"]["test"]["acc"] > CHANCE
        assert res["student"]["kwargs"] == chain[i]["kwargs"]
        if i:
            assert res["teacher"]["checkpoint"] == str(tmp_path / "run" / dirs[i - 1] / "model.safetensors")
            assert res["teacher"]["kwargs"] == chain[i - 1]["kwargs"]
        else:
            assert res["teacher"] == {}
    cfg = validate_config(config({"name": "takd", "chain": chain}))
    with pytest.raises(ConfigError, match="already holds a finished run"):
        run_scheme(cfg, run_dir=tmp_path / "run", log=lambda _: None)
    lines: list[str] = []
    again = run_scheme(cfg, run_dir=tmp_path / "run", resume=True, log=lines.append)
    assert sum("finished earlier" in line for line in lines) == 3 and not any("epoch" in line for line in lines)
    assert again["stages"] == out["stages"]


def test_takd_chain_of_one_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="at least two"):
        run(tmp_path, {"name": "takd", "chain": ["mlp"]})


def test_unknown_scheme_lists_known_ones(tmp_path):
    with pytest.raises(ConfigError) as e:
        run(tmp_path, {"name": "takdd"})
    msg = str(e.value)
    assert "'takd'" in msg and all(n in msg for n in ("ban", "byot", "dml", "ensemble", "one", "specialists"))


def test_unknown_setting_names_the_closest(tmp_path):
    with pytest.raises(ConfigError, match="no setting 'generatons'.*Did you mean 'generations'"):
        run(tmp_path, {"name": "ban", "generatons": 2})
    with pytest.raises(ConfigError, match=r"scheme.chain.1: a model has no key 'kwarg'. Did you mean 'kwargs'"):
        parse_settings("takd", {"chain": ["mlp", {"model": "mlp", "kwarg": {}}]})
    with pytest.raises(ConfigError, match=r"scheme.chain.1: a model is a zoo name or a mapping"):
        parse_settings("takd", {"chain": ["mlp", 3]})


def test_ban_generations_and_their_ensemble(tmp_path):
    out = run(
        tmp_path, {"name": "ban", "generations": 2}, method={"name": "kd", "temperature": 1.0, "alpha": 1.0}
    )
    assert set(out["stages"]) == {"gen0", "gen1", "gen2", "ensemble"}
    for g in ("gen0", "gen1", "gen2", "ensemble"):
        assert stage_results(tmp_path, g)["final"]["test"]["acc"] > CHANCE
    assert stage_results(tmp_path, "gen2")["teacher"]["checkpoint"].endswith("gen1/model.safetensors")


def test_dml_losses_zero_kl_for_identical_peers_and_symmetric():
    z = torch.randn(5, 3)
    y = torch.randint(0, 3, (5,))
    ce, kl = dml_losses(torch.stack([z, z, z]), y)
    assert float(kl) == pytest.approx(0.0, abs=1e-6)
    assert float(ce) == pytest.approx(3 * float(F.cross_entropy(z, y)), rel=1e-5)
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    _, kl_ab = dml_losses(torch.stack([a, b]), y)
    _, kl_ba = dml_losses(torch.stack([b, a]), y)
    lp_a, lp_b = a.log_softmax(-1), b.log_softmax(-1)
    hand = (lp_b.exp() * (lp_b - lp_a)).sum(-1).mean() + (lp_a.exp() * (lp_a - lp_b)).sum(-1).mean()
    torch.testing.assert_close(kl_ab, hand)
    torch.testing.assert_close(kl_ab, kl_ba)


def test_dml_scheme_reports_each_peer(tmp_path):
    out = run(
        tmp_path,
        {"name": "dml", "peers": ["mlp", {"model": "mlp", "kwargs": {"hidden": [8]}}]},
        student={"model": "mlp", "kwargs": {"hidden": [12]}},
    )
    for i, d in enumerate(("peer0-mlp", "peer1-mlp")):
        res = stage_results(tmp_path, d)
        assert res["final"]["test"]["acc"] > CHANCE
        assert out["stages"][f"peer{i}"]["test_acc"] == res["final"]["test"]["acc"]
    # a saved peer is its plain architecture
    peer1 = create_model("mlp", CLASSES, (12,), hidden=[8])
    peer1.load_state_dict(load_weights(tmp_path / "run" / "peer1-mlp" / "model.safetensors"))


def test_one_gate_sums_to_one_and_deployed_branch_reproduces_its_logits(tmp_path):
    torch.manual_seed(0)
    factory = lambda: create_model("convnet4", CLASSES, (1, 8, 8))
    x = torch.randn(5, 1, 8, 8)
    net = MultiBranch(factory, 3, "stage1.relu2", x[:2]).eval()
    with torch.no_grad():
        ens = net(x)
    z, g = net.last["branch_logits"], net.last["gate"]
    torch.testing.assert_close(g.sum(-1), torch.ones(5))
    torch.testing.assert_close(ens, torch.einsum("nm,mnc->nc", g, z))
    # shared low layers are one object; branch layers are not
    assert net.branches[1].stage1.conv1 is net.branches[0].stage1.conv1
    assert net.branches[1].stage2.conv1 is not net.branches[0].stage2.conv1
    plain = factory().eval()
    plain.load_state_dict(net.branches[2].state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(x), z[2])
    parts = one_losses(z, ens, torch.zeros(5, dtype=torch.long))
    assert float(parts["kd"]) >= 0


def test_one_scheme_deploys_a_branch(tmp_path):
    out = run(tmp_path, {"name": "one", "branches": 2})
    assert out["split"] == "body.relu1"
    for b in ("branch0", "branch1"):
        assert stage_results(tmp_path, b)["final"]["test"]["acc"] > CHANCE
    plain = create_model("mlp", CLASSES, (12,), hidden=[12, 12])
    plain.load_state_dict(load_weights(tmp_path / "run" / "model.safetensors"))


def test_byot_exit_shapes_and_deepest_teaches_shallower():
    torch.manual_seed(0)
    base = create_model("cnn1d", CLASSES, (1, 32))
    x = torch.randn(6, 1, 32)
    net = SelfDistillNet(base, ["act1", "act2"], "act3", CLASSES, x[:2])
    net(x)
    last = net.last
    assert [tuple(z.shape) for z in last["exit_logits"]] == [(6, CLASSES)] * 3
    assert all(h.shape == last["deep_features"].shape for h in last["hints"])
    logits = [z.detach().requires_grad_(True) for z in last["exit_logits"]]
    parts = byot_losses(
        logits,
        [h.detach() for h in last["hints"]],
        last["deep_features"].detach(),
        torch.zeros(6, dtype=torch.long),
        alpha=0.1,
        lam=1e-6,
        temperature=3.0,
    )
    assert float(parts["kd_per_exit"][-1]) == pytest.approx(0.0, abs=1e-6)
    assert all(float(k) > 0 for k in parts["kd_per_exit"][:-1])
    parts["kd"].backward()
    assert logits[-1].grad is None  # the teacher gets no gradient from KD
    assert float(logits[0].grad.abs().sum()) > 0


def test_byot_scheme_reports_every_exit_and_exports_them(tmp_path):
    out = run(tmp_path, {"name": "byot"})
    assert set(out["stages"]) == {"exit0", "exit1"}
    for e in ("exit0", "exit1"):
        res = stage_results(tmp_path, e)
        assert res["final"]["test"]["acc"] > CHANCE
    model = load_exit(tmp_path / "run" / "exit0")
    x = torch.randn(3, 12)
    assert model(x).shape == (3, CLASSES)


def test_munge_keeps_shapes_and_takes_attributes_from_sample_or_neighbour():
    torch.manual_seed(0)
    x = torch.randn(20, 2, 5)
    pseudo, src, nbr = munge(x, 45, p=0.5, s=math.inf, seed=1)
    assert pseudo.shape == (45, 2, 5)
    from_self, from_nbr = pseudo == x[src], pseudo == x[nbr]
    assert bool((from_self | from_nbr).all())
    assert 0.3 < float((from_nbr & ~from_self).float().mean()) < 0.7  # p = 0.5 of attributes swapped
    d = torch.cdist(x.flatten(1), x.flatten(1)) + torch.eye(20) * 1e9
    assert torch.equal(nearest_neighbours(x), d.argmin(1))
    noisy, _, _ = munge(x, 45, p=0.5, s=1.0, seed=1)
    kept = from_self & ~from_nbr  # same seed, same swaps: only swapped attributes are perturbed
    assert torch.equal(noisy[kept], pseudo[kept])
    assert bool((noisy[~kept] != pseudo[~kept]).all())


def test_transfer_scheme_with_munge(tmp_path):
    out = run(tmp_path, {"name": "transfer", "generator": "munge", "size": 300})
    assert out["transfer_size"] == 300
    res = stage_results(tmp_path, "student")
    assert res["final"]["test"]["acc"] > CHANCE and res["dataset"]["transfer"] == 300


def test_specialists_combination_equals_generalist_where_no_specialist_covers():
    torch.manual_seed(0)
    gen = torch.randn(8, 5) * 2
    spec = [torch.randn(8, 3)]
    subsets = [[0, 1]]
    q = combine_specialists(gen, spec, subsets, top_n=1, steps=100)
    top = gen.argmax(-1)
    uncovered = ~torch.isin(top, torch.tensor([0, 1]))
    assert uncovered.any() and (~uncovered).any()
    torch.testing.assert_close(q[uncovered], gen.log_softmax(-1)[uncovered])
    assert not torch.allclose(q[~uncovered], gen.log_softmax(-1)[~uncovered])
    # a specialist that agrees with the generalist leaves it unchanged (both KLs are zero there)
    p = gen.softmax(-1)
    agree = torch.cat([p[:, :2], p[:, 2:].sum(-1, keepdim=True)], -1).log()
    q2 = combine_specialists(gen, [agree], subsets, top_n=5, steps=100)
    torch.testing.assert_close(q2, gen.log_softmax(-1), atol=1e-3, rtol=1e-3)


def test_confusion_clusters_group_classes_predicted_together():
    # classes 0/1 and 2/3 are confused with each other, never across
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(200):
        a = torch.rand(1, generator=g).item()
        rows.append([a, 1 - a, 0, 0] if torch.rand(1, generator=g) < 0.5 else [0, 0, a, 1 - a])
    assert sorted(confusion_clusters(torch.tensor(rows), 2)) == [[0, 1], [2, 3]]


def test_specialists_scheme(tmp_path):
    out = run(tmp_path, {"name": "specialists", "clusters": 2, "min_classes": 2, "steps": 30})
    assert stage_results(tmp_path, "generalist")["final"]["test"]["acc"] > CHANCE
    res = stage_results(tmp_path, "combined")["final"]["test"]
    assert res["combined_acc"] > CHANCE
    for m, classes in enumerate(out["subsets"]):
        meta = json.loads((tmp_path / "run" / f"specialist{m}" / "model.json").read_text())
        assert meta["classes"] == classes and meta["num_classes"] == len(classes) + 1


def test_cli_lists_schemes_and_refuses_bad_settings(tmp_path, capsys):
    from kdistill.cli import main

    assert main(["list", "schemes", "--json"]) == 0
    names = json.loads(capsys.readouterr().out)
    # the built-in schemes, in order; a test module may have registered a toy one beside them
    assert names == sorted(names)
    assert {"ban", "byot", "dml", "ensemble", "one", "specialists", "takd", "transfer"} <= set(names)
    assert set(names) == set(SCHEMES.names())
    path = tmp_path / "c.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config({"name": "dml", "peer_targt": "each"})))
    assert main(["train", str(path), "--run-dir", str(tmp_path / "r")]) == 2
    assert "Did you mean 'peer_target'" in capsys.readouterr().err
