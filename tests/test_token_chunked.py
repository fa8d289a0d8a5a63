"""Chunked token losses (issue 27 item 2): every token divergence and the hard-label CE,
computed chunk by chunk from hidden states, equal the full-logit losses in value and
gradient (1e-6), with a live teacher, a top-k cache and a top_k truncation; the LM
distiller takes the chunked path for Hugging Face models and keeps no
``(positions, vocabulary)`` tensor for the backward pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdistill.errors import ConfigError
from kdistill.losses import hard_label_ce
from kdistill.methods._token import TokenTopK, token_loss
from kdistill.methods._token_chunked import HeadInput, chunked_ce, chunked_token_loss
from kdistill.teachers import TeacherOutput

N, L, H, V, PAD = 2, 9, 8, 50, 3
CASES = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.0), ("jsd", 0.5), ("jsd", 1.0), ("skew_kl", 0.1),
         ("skew_reverse_kl", 0.3), ("tvd", 0.5)]


def setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, L, H, generator=g, requires_grad=True)
    w = (torch.randn(V + PAD, H, generator=g) * 0.7).requires_grad_()
    b = (torch.randn(V + PAD, generator=g) * 0.1).requires_grad_()
    th = torch.randn(N, L, H, generator=g)
    tw = torch.randn(V + PAD, H, generator=g) * 0.7
    labels = torch.randint(0, V, (N, L), generator=g)
    labels[0, :3] = -100
    labels[1, 7:] = -100
    return h, w, b, th, tw, labels


def grads(loss, *ts):
    return torch.autograd.grad(loss, ts)


@pytest.mark.parametrize("kind,coef", CASES)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_chunked_equals_full_live_teacher(kind, coef, temperature):
    h, w, b, th, tw, labels = setup()
    full_logits = F.linear(h, w, b)[..., :V]
    t_logits = F.linear(th, tw)[..., :V]
    ref = token_loss(kind, full_logits, TeacherOutput(t_logits), labels, temperature, coef)
    g_ref = grads(ref, h, w, b)
    for chunk in (1, 4, 7, 1000):
        got = chunked_token_loss(kind, HeadInput(h, w, b, V), HeadInput(th, tw, None, V), labels, temperature,
                                 coef, chunk=chunk)
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
        for a, r in zip(grads(got, h, w, b), g_ref):
            torch.testing.assert_close(a, r, atol=1e-6, rtol=1e-5)
    assert float(ref.detach()) > 0  # a real divergence between two random heads
    # a teacher given as full logits (the fallback) gives the same value
    got = chunked_token_loss(kind, HeadInput(h, w, b, V), TeacherOutput(t_logits), labels, temperature, coef, chunk=5)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind,coef", CASES)
def test_chunked_equals_full_topk(kind, coef):
    h, w, b, th, tw, labels = setup(1)
    full_logits = F.linear(h, w, b)[..., :V]
    t_logits = F.linear(th, tw)[..., :V]
    # top_k truncation of a live teacher
    ref = token_loss(kind, full_logits, TeacherOutput(t_logits), labels, 1.0, coef, top_k=6)
    got = chunked_token_loss(kind, HeadInput(h, w, b, V), HeadInput(th, tw, None, V), labels, 1.0, coef, top_k=6,
                             chunk=4)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    for a, r in zip(grads(got, h, w), grads(ref, h, w)):
        torch.testing.assert_close(a, r, atol=1e-6, rtol=1e-5)
    # a top-k cache: no teacher logits at all
    v, i = F.log_softmax(t_logits, -1).topk(6, -1)
    cache = TokenTopK(v, topk_logprobs=v, topk_indices=i)
    ref = token_loss(kind, F.linear(h, w, b)[..., :V], cache, labels, 1.0, coef)
    got = chunked_token_loss(kind, HeadInput(h, w, b, V), cache, labels, 1.0, coef, chunk=5)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    for a, r in zip(grads(got, h, w), grads(ref, h, w)):
        torch.testing.assert_close(a, r, atol=1e-6, rtol=1e-5)
    with pytest.raises(ConfigError, match="temperature 1 only"):
        chunked_token_loss(kind, HeadInput(h, w, b, V), cache, labels, 2.0, coef)


def test_chunked_ce_and_bad_input():
    h, w, b, th, tw, labels = setup(2)
    for ls in (0.0, 0.1):
        ref = hard_label_ce(F.linear(h, w, b)[..., :V], labels, ls)
        got = chunked_ce(HeadInput(h, w, b, V), labels, ls, chunk=3)
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
        for a, r in zip(grads(got, h, w, b), grads(ref, h, w, b)):
            torch.testing.assert_close(a, r, atol=1e-6, rtol=1e-5)
    none = torch.full_like(labels, -100)  # nothing to learn: zero, not NaN
    assert float(chunked_token_loss("forward_kl", HeadInput(h, w, b, V), HeadInput(th, tw, None, V), none).detach()) == 0.0
    with pytest.raises(ConfigError, match="vocabularies differ"):
        chunked_token_loss("forward_kl", HeadInput(h, w, b, V), HeadInput(th, tw, None, V + 1), labels)
    with pytest.raises(ConfigError, match="positive number"):
        chunked_ce(HeadInput(h, w, b, V), labels, 0.0, chunk=0)


pytest.importorskip("transformers")

from kdistill.lm import build_causal_lm  # noqa: E402
from kdistill.lm.chunked import LMDistiller, decoder_and_head  # noqa: E402
from kdistill.methods import build_term, create  # noqa: E402

TINY = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64}


def _max_saved(fn):
    """The largest tensor (elements) autograd keeps for the backward pass while ``fn`` runs."""
    sizes = [0]

    def pack(t):
        sizes[0] = max(sizes[0], t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sizes[0]


@pytest.mark.parametrize("terms", [[{"name": "gkd", "beta": 0.5}], [{"name": "forward_kl", "weight": 0.7},
                                                                    {"name": "ce", "weight": 0.3}]])
def test_lm_distiller_chunked_equals_full(terms):
    student, _ = build_causal_lm("hf-config", TINY, 257, seed=1)
    teacher, _ = build_causal_lm("hf-config", TINY, 257, seed=2)
    x = torch.randint(0, 257, (3, 20), generator=torch.Generator().manual_seed(0))
    y = x.roll(-1, 1)
    y[:, :4] = -100
    made = create([dict(t) for t in terms], student, teacher)
    full, chunked = LMDistiller.wrap(made, None), LMDistiller.wrap(made, 7)
    assert decoder_and_head(student) is not None
    ref, ref_saved = _max_saved(lambda: full({"x": x, "y": y}))
    g_ref = torch.autograd.grad(ref["loss"], list(student.parameters()))
    got, saved = _max_saved(lambda: chunked({"x": x, "y": y}))
    g = torch.autograd.grad(got["loss"], list(student.parameters()))
    torch.testing.assert_close(got["loss"], ref["loss"], atol=1e-6, rtol=1e-6)
    assert set(got) - {"logits"} == set(ref) - {"logits"}
    for a, r in zip(g, g_ref):
        torch.testing.assert_close(a, r, atol=1e-6, rtol=1e-5)
    # full logits keep (3, 20, 257) for the backward pass; chunked, the largest kept tensor is the
    # decoder's own (3, 20, 32) MLP activation, under one row's (20, 257) logits
    assert ref_saved >= 3 * 20 * 257 and saved < 20 * 257


def test_a_model_with_scaled_logits_falls_back_to_full_logits():
    student, _ = build_causal_lm("hf-config", TINY, 257, seed=1)
    teacher, _ = build_causal_lm("hf-config", TINY, 257, seed=2)
    plain = student.forward
    student.forward = lambda ids: 2.0 * plain(ids)  # e.g. a logit scale: head(decoder(ids)) is not the logits
    assert decoder_and_head(student) is None
    d = LMDistiller(student, teacher, [build_term("forward_kl", student, teacher)], loss_chunk=4)
    x = torch.randint(0, 257, (2, 10), generator=torch.Generator().manual_seed(0))
    out = d({"x": x, "y": x.roll(-1, 1)})
    want = token_loss("forward_kl", student(x), TeacherOutput(teacher(x)), x.roll(-1, 1))
    torch.testing.assert_close(out["loss"], want, atol=1e-6, rtol=1e-6)


def test_auto_chunk_and_the_setting():
    from kdistill.config import load_config
    from kdistill.methods._token_chunked import auto_chunk

    assert [auto_chunk(v) for v in (257, 32768, 131072, 1 << 22)] == [1024, 512, 128, 16]
    base = {"task": "causal-lm", "data": {"train": "t.txt"}, "student": {"model": "hf-config"}}
    assert load_config(base=base).lm.loss_chunk == "auto"
    assert load_config(base=base, overrides=["lm.loss_chunk=64"]).lm.loss_chunk == 64
    assert load_config(base=base, overrides=["lm.loss_chunk=null"]).lm.loss_chunk is None
    for bad in ("0", "many"):
        with pytest.raises(ConfigError, match="loss_chunk"):
            load_config(base=base, overrides=[f"lm.loss_chunk={bad}"])


def test_auto_keeps_full_logits_for_a_small_batch(monkeypatch):
    import kdistill.lm.chunked as chunked

    student, _ = build_causal_lm("hf-config", TINY, 257, seed=1)
    teacher, _ = build_causal_lm("hf-config", TINY, 257, seed=2)
    x = torch.randint(0, 257, (2, 10), generator=torch.Generator().manual_seed(0))
    calls = []
    monkeypatch.setattr(chunked, "head_input", lambda *a: calls.append(1) or pytest.fail("chunked"))
    d = LMDistiller.wrap(create("forward_kl", student, teacher), "auto")
    d({"x": x, "y": x.roll(-1, 1)})  # 2 x 10 x 257 logits: under one auto chunk, full logits
    monkeypatch.setattr(chunked, "AUTO_ELEMENTS", 2 * 10 * 257 - 1)
    with pytest.raises(pytest.fail.Exception, match="chunked"):
        d({"x": x, "y": x.roll(-1, 1)})  # one value more than a chunk: the chunked path
    assert calls == [1]


def test_on_policy_distiller_chunked_equals_full():
    from kdistill.lm.onpolicy import OnPolicyDistiller

    student, _ = build_causal_lm("hf-config", TINY, 257, seed=1)
    teacher, _ = build_causal_lm("hf-config", TINY, 257, seed=2)
    x = torch.randint(0, 256, (4, 12), generator=torch.Generator().manual_seed(0))
    batch = {"x": x, "y": x.roll(-1, 1), "index": torch.arange(4)}
    plen = torch.tensor([3, 3, 5, 5])

    def make(chunk):
        return OnPolicyDistiller(student, teacher, [build_term("gkd", student, teacher)], plen, 1.0, None, 1.0,
                                 seed=7, eos_id=None, loss_chunk=chunk).train()

    full, chunked = make(None), make(5)
    ref, got = full(batch)["loss"], chunked(batch)["loss"]  # the same draw: the same samples
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    assert int(chunked.draws) == int(full.draws) == 1 and float(ref) > 0
    g_ref = torch.autograd.grad(ref, list(student.parameters()))
    for a, r in zip(torch.autograd.grad(got, list(student.parameters())), g_ref):
        torch.testing.assert_close(a, r, atol=1e-6, rtol=1e-5)


def test_lm_metrics_in_chunks_equal_full_logits(monkeypatch):
    import kdistill.lm.metrics as metrics
    from kdistill.lm import ByteTokenizer
    from kdistill.lm.data import records_dataset

    student, _ = build_causal_lm("hf-config", TINY, 257, seed=1)
    teacher, _ = build_causal_lm("hf-config", TINY, 257, seed=2)
    recs = [{"prompt": "the cat ", "completion": "sat on a mat " * (i % 3 + 1)} for i in range(6)]
    data = records_dataset(recs, ByteTokenizer(), block_size=40, name="r")
    full = metrics.lm_metrics(student, data, 4, "cpu", teacher)
    monkeypatch.setattr(metrics, "AUTO_ELEMENTS", 1)  # every batch in chunks
    monkeypatch.setattr(metrics, "auto_chunk", lambda vocab: 7)
    called = []
    real = metrics.head_input
    monkeypatch.setattr(metrics, "head_input", lambda *a: called.append(1) or real(*a))
    chunked = metrics.lm_metrics(student, data, 4, "cpu", teacher)
    assert len(called) >= 2  # the hidden-state path ran, for student and teacher
    assert chunked.keys() == full.keys() and chunked["tokens"] == full["tokens"] > 0
    for k in full:
        assert chunked[k] == pytest.approx(full[k], rel=1e-6, abs=1e-7), k
