"""Cross-tokenizer token-level KD (uld, gold): worked numbers of the distances, the span
alignment of a byte-level and a BPE tokenization of the same text (both tokenizers made
here from one corpus), zero loss for teacher = student under one tokenizer, the loss
falling in a run with a BPE teacher and a byte-level student, and every other token
method still refusing another tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from kdistill.config import load_config  # noqa: E402
from kdistill.errors import ConfigError  # noqa: E402
from kdistill.lm import ByteTokenizer, build_causal_lm, load_text_dataset  # noqa: E402
from kdistill.lm.cross_tokenizer import CrossTokenizerTeacher, encode_like, span_groups, token_spans  # noqa: E402
from kdistill.lm.models import load_tokenizer  # noqa: E402
from kdistill.methods._cross import gold_loss, merge_groups, sorted_l1, uld_loss  # noqa: E402
from kdistill.tasks.causal_lm.run import run_lm  # noqa: E402
from kdistill.teachers import TeacherOutput  # noqa: E402

TINY = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64}


@pytest.fixture(scope="module")
def bpe(corpus, tmp_path_factory):
    """A small byte-level BPE trained here on the corpus (vocabulary 300)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train([str(corpus)], trainer)
    folder = tmp_path_factory.mktemp("bpe")
    PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<eos>").save_pretrained(str(folder))
    return folder


def test_sorted_l1_and_merge_worked_numbers():
    p = torch.tensor([[0.7, 0.2, 0.1]])
    q = torch.tensor([[0.5, 0.5]])
    assert sorted_l1(p, q).item() == pytest.approx(0.2 + 0.3 + 0.1)
    assert sorted_l1(p, p[:, [2, 0, 1]]).item() == 0.0  # a permuted vocabulary costs nothing
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    merged = merge_groups(probs.log(), [[0, 1]], [0, 1])  # span of 2: P(first) * P(actual 2nd token = 1)
    torch.testing.assert_close(merged[0], probs[0] * 0.5)


def test_spans_of_byte_and_bpe_tokenizations_cover_the_same_text(bpe):
    b, t = ByteTokenizer(), load_tokenizer(f"hf:{bpe}")
    ids = b.encode("the cat sat.") + [b.eos_id] + b.encode("a dog ran")
    t_ids = encode_like(b, t, ids)
    assert t_ids.count(t.eos_id) == 1 and len(t_ids) < len(ids)  # BPE merges bytes into fewer tokens
    assert t.decode(t_ids[: t_ids.index(t.eos_id)]) == "the cat sat."
    s_sp, t_sp = token_spans(b, ids), token_spans(t, t_ids)
    assert s_sp[-1][1] == t_sp[-1][1] == len("the cat sat.") + 1 + len("a dog ran")
    groups = span_groups(s_sp, t_sp)
    for gs, gt in groups:  # each span: the same bytes in both tokenizations
        assert (s_sp[gs[0]][0], s_sp[gs[-1]][1]) == (t_sp[gt[0]][0], t_sp[gt[-1]][1])
    assert sum(len(gs) for gs, _ in groups) == len(ids) and sum(len(gt) for _, gt in groups) == len(t_ids)
    assert any(len(gs) > 1 for gs, _ in groups)  # some BPE tokens cover several bytes


def _bpe_data(corpus, tok, rows=8):
    return load_text_dataset(str(corpus), tok, block_size=16, separator="%").select(torch.arange(rows))


def test_loss_is_zero_for_the_same_model_and_tokenizer(corpus, bpe):
    tok = load_tokenizer(f"hf:{bpe}")
    net, _ = build_causal_lm("hf-config", TINY, tok.vocab_size, seed=3, eos_id=tok.eos_id)
    other, _ = build_causal_lm("hf-config", TINY, tok.vocab_size, seed=4, eos_id=tok.eos_id)
    batch = _bpe_data(corpus, tok).take(torch.arange(8))
    z = net(batch["x"])
    wrapped = CrossTokenizerTeacher(net, tok, tok)(batch)  # the alignment path, one tokenizer
    assert all(len(gs) == 1 for row in wrapped.groups for gs, _ in row)
    plain = TeacherOutput(net(batch["x"]).detach())
    for teacher in (wrapped, plain):
        assert uld_loss(z, teacher, batch["y"]).item() < 1e-6
        assert gold_loss(z, teacher, batch["y"]).item() < 1e-6
    far = CrossTokenizerTeacher(other, tok, tok)(batch)
    assert uld_loss(z, far, batch["y"]).item() > 1e-3 and gold_loss(z, far, batch["y"]).item() > 1e-3


def _cfg(corpus, tmp_path, name, teacher, method, tokenizer="byte", epochs=3, **lm):
    return load_config(base={
        "task": "causal-lm",
        "data": {"train": str(corpus), "block_size": 24, "batch_size": 16, "val_split": 0.2, "separator": "%"},
        "tokenizer": tokenizer, "teacher": teacher, "student": {"model": "hf-config", "kwargs": TINY},
        "method": method, "lm": {"prompt_tokens": 6, **lm},
        "train": {"epochs": epochs, "lr": 0.01, "device": "cpu", "progress": False, "seed": 0, "deterministic": True},
        "output": {"dir": str(tmp_path), "name": name}})


@pytest.fixture(scope="module")
def bpe_teacher(corpus, bpe, tmp_path_factory):
    """A BPE-tokenized teacher trained here (3 epochs of cross-entropy), as an hf: folder."""
    out = tmp_path_factory.mktemp("bpe_teacher")
    run_lm(_cfg(corpus, out, "t", None, {"name": "ce"}, tokenizer=f"hf:{bpe}"), log=lambda s: None)
    return out / "t" / "student"


@pytest.mark.parametrize("method", ["uld", "gold"])
def test_cross_tokenizer_loss_falls_in_training(corpus, tmp_path, bpe_teacher, method):
    res = run_lm(_cfg(corpus, tmp_path, method, {"model": f"hf:{bpe_teacher}"}, {"name": method}), log=lambda s: None)
    rows = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    losses = [r[f"train_loss_{method}"] for r in rows if f"train_loss_{method}" in r]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2], losses  # falls every epoch
    assert res["tokenizer"] == "byte"


def test_other_token_methods_still_refuse_another_tokenizer(corpus, tmp_path, bpe_teacher):
    with pytest.raises(ConfigError, match="differs"):
        run_lm(_cfg(corpus, tmp_path, "kl", {"model": f"hf:{bpe_teacher}"}, {"name": "forward_kl"}),
               log=lambda s: None)
    with pytest.raises(ConfigError, match="differs"):  # one cross-tokenizer term does not let the others through
        run_lm(_cfg(corpus, tmp_path, "mix", {"model": f"hf:{bpe_teacher}"}, [{"name": "uld"}, {"name": "gkd"}]),
               log=lambda s: None)
    with pytest.raises(ConfigError, match="lm.regime: supervised"):
        run_lm(_cfg(corpus, tmp_path, "cache", {"model": f"hf:{bpe_teacher}"}, {"name": "uld"}, cache_k=8),
               log=lambda s: None)
