"""Several teachers: member weights that sum to one (fixed, entropy, label, route), the
weighted mixture by hand, routing that sends each record to its teacher (two teachers
that answer differently), and runs with several teachers on both tasks."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdistill.errors import ConfigError
from kdistill.teachers import EnsembleTeacher, member_weights


@pytest.mark.parametrize("shape, labels", [((3, 5, 7), torch.tensor([0, 1, 2, 3, 4])),
                                           ((3, 4, 6, 9), torch.tensor([[1, 2, -100, 3, 4, 5]] * 4))])
@pytest.mark.parametrize("weighting", ["fixed", "entropy", "label", "route"])
def test_member_weights_sum_to_one(shape, labels, weighting):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(*shape, generator=g) * 3
    route = torch.tensor([0, 2, -1, 1, 0][: shape[1]])
    w = member_weights(logits, weighting, [1.0, 2.0, 1.0], labels, route)
    assert w.shape == shape[:2] and (w >= 0).all()
    torch.testing.assert_close(w.sum(0), torch.ones(shape[1]))
    if weighting == "fixed":
        torch.testing.assert_close(w[:, 0], torch.tensor([0.25, 0.5, 0.25]))
    if weighting == "route":  # one-hot on the routed member; -1 falls back to the fixed weights
        assert w[0, 0] == 1 and w[2, 1] == 1 and w[1, 3] == 1
        torch.testing.assert_close(w[:, 2], torch.tensor([0.25, 0.5, 0.25]))


def test_confidence_weights_favour_the_sure_and_the_right_member():
    sure = torch.tensor([[8.0, 0.0, 0.0], [0.0, 8.0, 0.0]])
    flat = torch.zeros(2, 3)
    w = member_weights(torch.stack([flat, sure]), "entropy")
    assert (w[1] > 0.7).all()  # lower entropy, higher weight: softmax(-H)
    h_flat = torch.log(torch.tensor(3.0))
    p = F.softmax(sure[0], -1)
    h_sure = -(p * p.log()).sum()
    torch.testing.assert_close(w[1, 0], torch.sigmoid(h_flat - h_sure))
    labels = torch.tensor([1, 1])  # the sure member is right on sample 1, wrong on sample 0
    w = member_weights(torch.stack([flat, sure]), "label", labels=labels)
    assert w[0, 0] > w[1, 0] and w[1, 1] > w[0, 1]
    p_right = F.softmax(sure[1], -1)[1]
    torch.testing.assert_close(w[1, 1], p_right / (p_right + 1 / 3))


def test_weighted_ensemble_is_the_weighted_mixture():
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    x = torch.randn(5, 4)
    ens = EnsembleTeacher([a, b], "mean_prob", weights=[1.0, 3.0])
    out = ens({"x": x, "y": torch.zeros(5, dtype=torch.long)})
    with torch.no_grad():
        want = 0.25 * F.softmax(a(x), -1) + 0.75 * F.softmax(b(x), -1)
        torch.testing.assert_close(out.logits.exp(), want)
        at_t = 0.25 * F.softmax(a(x) / 4, -1) + 0.75 * F.softmax(b(x) / 4, -1)
        torch.testing.assert_close(out.soft_targets(4.0), at_t)
    plain = EnsembleTeacher([a, b], "mean_logit", weights=[1.0, 3.0])({"x": x})
    with torch.no_grad():
        torch.testing.assert_close(plain.logits, 0.25 * a(x) + 0.75 * b(x))
    with pytest.raises(ConfigError, match="weights"):
        EnsembleTeacher([a, b], weights=[1.0])
    with pytest.raises(ConfigError, match="route"):
        EnsembleTeacher([a, b], weighting="route")


def test_image_run_with_a_weighted_ensemble(tiny_cfg, tmp_path):
    from kdistill.config import load_config
    from kdistill.runs import run_experiment

    members = [{"model": "mlp", "kwargs": {"hidden": [32]}}, {"model": "mlp", "kwargs": {"hidden": [16]}}]
    cfg = load_config(base=tiny_cfg(teacher={"ensemble": members, "weights": [3.0, 1.0], "weighting": "entropy",
                                             "train": {"epochs": 1}}, train={"epochs": 1}))
    res = run_experiment(cfg, log=lambda s: None)
    assert res["teacher"]["weighting"] == "entropy" and res["teacher"]["weights"] == [3.0, 1.0]
    with pytest.raises(ConfigError, match="one non-negative number per ensemble member"):
        load_config(base=tiny_cfg(teacher={"ensemble": members, "weights": [1.0]}))


# -- causal LMs ---------------------------------------------------------------------------
TINY = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64}


@pytest.fixture(scope="module")
def lm_setup(tmp_path_factory):
    pytest.importorskip("transformers")
    from kdistill.lm import ByteTokenizer, build_causal_lm

    root = tmp_path_factory.mktemp("multi")
    tok = ByteTokenizer()
    folders = []
    for seed, name in ((1, "a"), (2, "b")):
        net, _ = build_causal_lm("hf-config", TINY, tok.vocab_size, seed=seed, eos_id=tok.eos_id)
        net.save(root / name, tok)
        folders.append(root / name)
    rng = random.Random(0)
    words = "the cat sat on a mat and the dog ran to the park".split()
    recs = [{"text": " ".join(rng.choice(words) for _ in range(5)), "teacher": "ab"[i % 2]} for i in range(40)]
    (root / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root, folders


def _lm_cfg(root, folders, weighting, name, **extra):
    from kdistill.config import load_config

    return load_config(base={
        "task": "causal-lm", "data": {"train": str(root / "r.jsonl"), "block_size": 24, "batch_size": 8,
                                      "val_split": 0.2},
        "tokenizer": "byte", "student": {"model": "hf-config", "kwargs": TINY}, "method": {"name": "forward_kl"},
        "teacher": {"kind": "multi", "members": [{"model": f"hf:{folders[0]}", "name": "a"},
                                                 {"model": f"hf:{folders[1]}", "name": "b"}],
                    "weighting": weighting, **extra},
        "train": {"epochs": 1, "lr": 0.01, "device": "cpu", "progress": False, "seed": 0, "deterministic": True},
        "output": {"dir": str(root / "runs"), "name": name}})


def test_routing_sends_each_record_to_its_teacher(lm_setup):
    from kdistill.lm import ByteTokenizer, build_causal_lm
    from kdistill.lm.multi_teacher import multi_teacher
    from kdistill.tasks.causal_lm.run import load_data

    root, folders = lm_setup
    cfg = _lm_cfg(root, folders, "route", "unit")
    tok = ByteTokenizer()
    train, _ = load_data(cfg, tok)
    _, teacher, record = multi_teacher(cfg, tok, train, lambda s: None)
    assert record["names"] == ["a", "b"]
    batch = train.take(torch.arange(len(train)))
    out = teacher(batch)
    nets = [build_causal_lm(f"hf:{f}", {}, tok.vocab_size)[0].eval() for f in folders]
    with torch.no_grad():
        own = [F.log_softmax(n(batch["x"]).float(), -1) for n in nets]
    records = [json.loads(line) for line in (root / "r.jsonl").read_text().splitlines()]
    want = {tok.decode(tok.encode(r["text"])): r["teacher"] for r in records}
    seen = set()
    for i in range(len(train)):
        n_tok = int((batch["y"][i] != -100).sum())
        text = tok.decode(batch["x"][i, 1:n_tok].tolist())
        member = next(m for t, m in want.items() if t.endswith(text))
        j = "ab".index(member)
        seen.add(member)
        torch.testing.assert_close(out.logits[i], own[j][i], atol=1e-5, rtol=0)  # its own teacher's answer
        assert (out.logits[i] - own[1 - j][i]).abs().max() > 1e-2  # and not the other's
    assert seen == {"a", "b"}


def test_lm_runs_with_several_teachers(lm_setup):
    root, folders = lm_setup
    from kdistill.tasks.causal_lm.run import run_lm

    for weighting in ("route", "entropy"):
        res = run_lm(_lm_cfg(root, folders, weighting, weighting), log=lambda s: None)
        assert res["teacher"]["weighting"] == weighting and res["final"]["val"]["ppl"] > 1
    with pytest.raises(ConfigError, match="names \\['c'\\]"):
        (root / "bad.jsonl").write_text("".join(json.dumps({"text": f"the cat {i}", "teacher": "c"}) + "\n"
                                                for i in range(10)))
        cfg = _lm_cfg(root, folders, "route", "bad").model_copy()
        cfg.data.train = str(root / "bad.jsonl")
        run_lm(cfg, log=lambda s: None)
    with pytest.raises(ConfigError, match="one per member"):
        _lm_cfg(root, folders, "fixed", "w", weights=[1.0])


def test_members_from_their_caches_mix_like_the_live_members(lm_setup):
    from kdistill.cache.tokens import write_lm_cache
    from kdistill.lm import ByteTokenizer, build_causal_lm
    from kdistill.lm.multi_teacher import multi_teacher
    from kdistill.tasks.causal_lm.run import load_data

    root, folders = lm_setup
    tok = ByteTokenizer()
    live_cfg = _lm_cfg(root, folders, "route", "live")
    train, _ = load_data(live_cfg, tok)
    for f in folders:  # the whole vocabulary cached: the mixture is the live one, to float16 rounding
        write_lm_cache(build_causal_lm(f"hf:{f}", {}, tok.vocab_size)[0], train, tok, tok.vocab_size,
                       root / f"cache-{f.name}", log=lambda s: None)
    cached_cfg = live_cfg.model_copy(deep=True)
    from kdistill.lm.teacher_config import MemberConfig

    cached_cfg.teacher.members = [MemberConfig(cache=str(root / f"cache-{f.name}"), name=f.name) for f in folders]
    batch = train.take(torch.arange(8))
    for weighting in ("route", "entropy"):
        live_cfg.teacher.weighting = cached_cfg.teacher.weighting = weighting
        live = multi_teacher(live_cfg, tok, train, lambda s: None)[1](batch)
        cached = multi_teacher(cached_cfg, tok, train, lambda s: None)[1](batch)
        torch.testing.assert_close(cached.logits, live.logits, atol=5e-3, rtol=0)
    from kdistill.config import load_config

    with pytest.raises(ConfigError, match="one of the two"):
        load_config(base={"task": "causal-lm", "data": {"train": "x"}, "student": {"model": "hf-config"},
                             "teacher": {"kind": "multi", "members": [{"model": "hf:a", "cache": "b"}, {"cache": "c"}]}})
