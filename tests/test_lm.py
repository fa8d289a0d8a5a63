"""The causal-LM task: text data and prompt masking, hf-config / hf: models, tokenizer
mismatch, on-policy samples, sequence-level transfer sets, and whole runs (resume exact).
Tiny Llama / GPT-2 configs built in the process; no hub, no downloads."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from kdistill.config import load_config  # noqa: E402
from kdistill.errors import ConfigError, DataError  # noqa: E402
from kdistill.lm import ByteTokenizer, build_causal_lm, load_text_dataset  # noqa: E402
from kdistill.lm.data import records_dataset  # noqa: E402
from kdistill.lm.generate import complete_rows, sample  # noqa: E402
from kdistill.lm.models import check_same_tokenizer, load_tokenizer  # noqa: E402
from kdistill.lm.onpolicy import OnPolicyDistiller  # noqa: E402
from kdistill.methods import build_term  # noqa: E402
from kdistill.tasks.causal_lm.run import run_lm  # noqa: E402

TINY = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64}
GPT2 = {"model_type": "gpt2", "n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 64}


def test_packed_text_targets_are_next_tokens(corpus):
    tok = ByteTokenizer()
    ds = load_text_dataset(str(corpus), tok, block_size=16, prompt_tokens=4, separator="%")
    assert ds.x.shape[1] == 16 and (ds.y[:, :-1] == ds.x[:, 1:]).all()
    assert (ds.y[:-1, -1] == ds.x[1:, 0]).all()  # blocks overlap by one token: none is lost as a target
    text = corpus.read_text()
    assert "%" not in tok.decode(ds.x.flatten().tolist())  # separator lines are dropped
    assert tok.eos_id in ds.x  # documents end with end-of-text
    assert ds.targets() == ds.x.numel() and len(text) > ds.targets() // 2


def test_jsonl_prompt_masking_exact():
    tok = ByteTokenizer()
    recs = [{"prompt": "Q: hi", "completion": " ok"}, {"prompt": "Q: a long prompt that gets cut", "completion": "x"},
            {"text": "plain"}]
    ds = records_dataset(recs, tok, block_size=12, name="r")
    p, c = tok.encode("Q: hi"), tok.encode(" ok")
    seq = p + c + [tok.eos_id]
    want = [-100] * (len(p) - 1) + c + [tok.eos_id] + [-100] * (12 - len(seq) + 1)
    assert ds.y[0].tolist() == want
    assert ds.x[0, : len(seq) - 1].tolist() == seq[:-1]
    assert (ds.y[1] == -100).all()  # completion cut off by block_size: no target at all
    assert ds.y[2, : len("plain")].tolist() == tok.encode("plain")[1:] + [tok.eos_id]
    assert ds.prompt_len.tolist() == [len(p), 11, 0]
    with pytest.raises(DataError, match="neither"):
        records_dataset([{"question": "?"}], tok, 8, "bad")


@pytest.mark.parametrize("kwargs", [TINY, GPT2])
def test_hf_config_model_and_folder_round_trip(kwargs, tmp_path):
    tok = ByteTokenizer()
    lm, rec = build_causal_lm("hf-config", kwargs, tok.vocab_size, seed=3, eos_id=tok.eos_id)
    lm.eval()  # GPT-2 has dropout
    x = torch.randint(0, 257, (2, 10), generator=torch.Generator().manual_seed(0))
    out = lm(x)
    assert out.shape == (2, 10, 257) and rec["params"] == sum(p.numel() for p in lm.parameters())
    again, _ = build_causal_lm("hf-config", kwargs, tok.vocab_size, seed=3, eos_id=tok.eos_id)
    torch.testing.assert_close(again.eval()(x), out)  # the seed fixes the initialisation
    lm.save(tmp_path / "m", tok)
    loaded, _ = build_causal_lm(f"hf:{tmp_path / 'm'}", {}, tok.vocab_size)
    torch.testing.assert_close(loaded.eval()(x), out)
    assert isinstance(load_tokenizer(f"hf:{tmp_path / 'm'}"), ByteTokenizer)
    # causal: a later token never changes an earlier position's logits
    x2 = x.clone()
    x2[:, 7:] = 5
    torch.testing.assert_close(lm(x2)[:, :7], out[:, :7])


def _word_tokenizer(folder, words):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<eos>", "<unk>", *words])}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<eos>", unk_token="<unk>").save_pretrained(str(folder))


def test_tokenizer_mismatch_refused(tmp_path):
    _word_tokenizer(tmp_path / "a", ["cat", "dog"])
    _word_tokenizer(tmp_path / "b", ["cat", "dog", "bird"])
    a, a2, b = load_tokenizer(f"hf:{tmp_path / 'a'}"), load_tokenizer(f"hf:{tmp_path / 'a'}"), load_tokenizer(f"hf:{tmp_path / 'b'}")
    assert a.encode("cat dog") == [2, 3] and a.vocab_size == 4
    check_same_tokenizer(a, a2, "supervised")
    with pytest.raises(ConfigError, match="sequence-level KD"):
        check_same_tokenizer(a, b, "supervised")
    with pytest.raises(ConfigError, match="differs"):
        check_same_tokenizer(ByteTokenizer(), a, "on_policy")
    check_same_tokenizer(a, b, "sequence")  # text passes between them: allowed


def test_on_policy_batches_are_the_students_samples():
    student, _ = build_causal_lm("hf-config", TINY, 257, seed=1)
    other, _ = build_causal_lm("hf-config", TINY, 257, seed=2)
    teacher, _ = build_causal_lm("hf-config", TINY, 257, seed=9)
    x = torch.randint(0, 256, (4, 12), generator=torch.Generator().manual_seed(0))
    batch = {"x": x, "y": x.roll(-1, 1), "index": torch.arange(4)}
    plen = torch.tensor([3, 3, 5, 5])
    terms = [build_term("gkd", student, teacher)]

    def make(s, lmbda):
        return OnPolicyDistiller(s, teacher, [build_term("gkd", s, teacher)], plen, lmbda, None, 1.0, seed=7, eos_id=None)

    d = make(student, 1.0).train()
    got = d.on_policy_batch(batch)
    assert got["on_policy"] and int(d.draws) == 1
    # the same draw reproduced by hand: the generator seeded (seed, draw 0), one uniform draw, then sampling
    g = torch.Generator().manual_seed(7 * 1_000_003)
    torch.rand((), generator=g)
    for p in (3, 5):
        rows = (plen == p).nonzero().flatten()
        want = sample(student, x[rows, :p], 12 - p, 1.0, g)
        assert torch.equal(got["x"][rows], want)
        assert (got["y"][rows, : p - 1] == -100).all()
        assert torch.equal(got["y"][rows, p - 1 : 11], want[:, p:])
    assert not torch.equal(make(other, 1.0).train().on_policy_batch(batch)["x"], got["x"])
    assert make(student, 0.0).train().on_policy_batch(batch) is batch
    # lmbda = 0.5: about half the draws are on-policy, and a second distiller draws the same ones
    d1, d2 = make(student, 0.5), make(student, 0.5)
    flags = [("on_policy" in d1.on_policy_batch(batch)) for _ in range(16)]
    assert flags == [("on_policy" in d2.on_policy_batch(batch)) for _ in range(16)] and 3 <= sum(flags) <= 13
    assert terms  # the distiller's loss runs on the samples
    out = make(student, 1.0).train()(batch)
    assert torch.isfinite(out["loss"]) and out["loss"] > 0


def test_complete_rows_stops_at_eos():
    class Fixed(torch.nn.Module):  # always predicts token 5, then end-of-text
        def forward(self, ids):
            logits = torch.full((*ids.shape, 8), -10.0)
            logits[..., 5] = 0.0
            logits[:, -1, 7] = 1.0 if ids.shape[1] >= 4 else -20.0
            return logits

    x, y = complete_rows(Fixed(), torch.zeros(1, 8, dtype=torch.long), torch.tensor([2]), None, 0.0, None, eos_id=7)
    assert x[0, :5].tolist() == [0, 0, 5, 5, 7]
    assert y[0].tolist() == [-100, 5, 5, 7, -100, -100, -100, -100]


def _config(corpus, tmp_path, **over):
    raw = {
        "task": "causal-lm",
        "data": {"train": str(corpus), "block_size": 24, "batch_size": 16, "val_split": 0.2, "separator": "%"},
        "tokenizer": "byte",
        "teacher": {"model": "hf-config", "kwargs": dict(TINY, hidden_size=32, intermediate_size=64),
                    "train": {"epochs": 2, "lr": 0.01}},
        "student": {"model": "hf-config", "kwargs": TINY},
        "method": {"name": "forward_kl"},
        "lm": {"prompt_tokens": 6, "max_new_tokens": 6, "sample_prompts": ["the cat"]},
        "train": {"epochs": 2, "lr": 0.01, "device": "cpu", "progress": False, "seed": 0, "deterministic": True},
        "output": {"dir": str(tmp_path), "name": "run"},
    }
    for k, v in over.items():
        raw[k] = v if not isinstance(v, dict) else {**raw.get(k, {}), **v}
    return load_config(base=raw)


@pytest.fixture(scope="module")
def teacher_dir(corpus, tmp_path_factory):
    """A teacher trained once (2 epochs), as an hf: folder, shared by the run tests."""
    out = tmp_path_factory.mktemp("teacher")
    cfg = _config(corpus, out, teacher=None, method={"name": "ce"},
                  student={"kwargs": dict(TINY, hidden_size=32, intermediate_size=64)})
    run_lm(cfg, log=lambda s: None)
    return out / "run" / "student"


def test_run_supervised_then_teacher_folder_and_resume_exact(corpus, tmp_path):
    res = run_lm(_config(corpus, tmp_path, teacher={"train": {"epochs": 1}}), log=lambda s: None)
    val = res["final"]["val"]
    assert res["teacher"]["trained_in_run"] and val["ppl"] < 257 and 0 <= val["agreement"] <= 1
    assert res["samples"][0]["prompt"] == "the cat" and res["train_tokens_per_s"] > 0
    # throughput from step time: every training target of every epoch, over the steps' seconds
    counted = res["train_tokens_per_s"] * res["train_step_time_s"]
    assert counted == pytest.approx(res["epochs"] * res["data"]["train_tokens"], rel=0.01)
    assert res["train_step_time_s"] <= res["train_time_s"]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["final"]["val"]["ppl"] == val["ppl"]
    teacher_dir = tmp_path / "run" / "teacher"
    # the trained teacher as hf:PATH; a run extended by --resume equals one trained at once
    # (constant learning rate: a cosine schedule depends on the planned number of epochs)
    t = {"model": f"hf:{teacher_dir}"}
    run_lm(_config(corpus, tmp_path, teacher=t, output={"name": "one"}, train={"epochs": 1, "schedule": "constant"}),
           log=lambda s: None)
    cfg2 = _config(corpus, tmp_path, teacher=t, output={"name": "one"}, train={"schedule": "constant"})
    resumed = run_lm(cfg2, resume=True, log=lambda s: None)
    straight = run_lm(_config(corpus, tmp_path, teacher=t, output={"name": "two"}, train={"schedule": "constant"}),
                      log=lambda s: None)
    assert resumed["final"]["val"]["nll"] == straight["final"]["val"]["nll"]
    with pytest.raises(ConfigError, match="finished run"):
        run_lm(cfg2, log=lambda s: None)


def test_run_sequence_level_uses_teacher_completions(corpus, tmp_path, teacher_dir):
    res = run_lm(_config(corpus, tmp_path, method={"name": "ce"}, lm={"regime": "sequence"},
                         teacher={"model": f"hf:{teacher_dir}"}, train={"epochs": 1}), log=lambda s: None)
    lines = (tmp_path / "run" / "transfer.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    assert len(rec["prompt_ids"]) == 6 and len(rec["completion_ids"]) <= 6
    teacher, _ = build_causal_lm(f"hf:{teacher_dir}", {}, 257)
    greedy = sample(teacher, torch.tensor([rec["prompt_ids"]]), len(rec["completion_ids"]), 0.0)
    assert greedy[0, 6:].tolist() == rec["completion_ids"]
    assert res["data"]["train_rows"] == len(lines)


def test_run_on_policy_and_config_errors(corpus, tmp_path, teacher_dir):
    res = run_lm(_config(corpus, tmp_path, method={"name": "gkd", "beta": 0.5}, teacher={"model": f"hf:{teacher_dir}"},
                         lm={"regime": "on_policy", "lmbda": 0.5}, train={"epochs": 1}), log=lambda s: None)
    assert res["on_policy_draws"] == res["steps"]
    with pytest.raises(ConfigError, match="hf-config"):
        _config(corpus, tmp_path, student={"model": "resnet8"})
    with pytest.raises(ConfigError, match="block_size"):
        _config(corpus, tmp_path, data={"blocksize": 3})
    with pytest.raises(ConfigError, match="needs a teacher"):
        run_lm(_config(corpus, tmp_path, teacher=None, output={"name": "x"}), log=lambda s: None)


def test_sequence_level_across_tokenizers_passes_text(corpus, tmp_path):
    """A teacher with its own word-level tokenizer teaches a byte-level student through text."""
    from kdistill.lm.models import HFTokenizer

    words = ["the", "cat", "sat", "dog", "ran"]
    _word_tokenizer(tmp_path / "t", words)
    t_tok = HFTokenizer(tmp_path / "t")
    net, _ = build_causal_lm("hf-config", TINY, t_tok.vocab_size, seed=0, eos_id=t_tok.eos_id)
    net.hf.save_pretrained(str(tmp_path / "t"))
    teacher = {"model": f"hf:{tmp_path / 't'}"}
    with pytest.raises(ConfigError, match="differs"):  # token-level KD across vocabularies: refused
        run_lm(_config(corpus, tmp_path, teacher=teacher, output={"name": "tok"}), log=lambda s: None)
    with pytest.raises(ConfigError, match="name: ce"):
        run_lm(_config(corpus, tmp_path, teacher=teacher, lm={"regime": "sequence"}, output={"name": "tok2"}),
               log=lambda s: None)
    res = run_lm(_config(corpus, tmp_path, teacher=teacher, method={"name": "ce"}, lm={"regime": "sequence"},
                         train={"epochs": 1}, output={"name": "tok3"}), log=lambda s: None)
    byte = ByteTokenizer()
    recs = [json.loads(line) for line in (tmp_path / "tok3" / "transfer.jsonl").read_text().splitlines()]
    texts = [byte.decode(r["completion_ids"]) for r in recs]
    assert any(texts)
    for t in texts:  # whole teacher words, the last one perhaps cut at the block's end
        *whole, last = t.split() or [""]
        assert set(whole) <= set(words) and any(w.startswith(last) for w in words)
    assert "val" not in res["teacher"] and "agreement" not in res["final"]["val"]


def test_teacher_cache_round_trip_and_fingerprints(corpus, tmp_path):
    from kdistill.cache.tokens import LMCachedTeacher, write_lm_cache
    from kdistill.methods._token import token_loss
    from kdistill.teachers import TeacherOutput

    tok = ByteTokenizer()
    ds = load_text_dataset(str(corpus), tok, block_size=16, separator="%").select(torch.arange(24))
    teacher, _ = build_causal_lm("hf-config", TINY, 257, seed=4)
    student, _ = build_causal_lm("hf-config", TINY, 257, seed=5)
    teacher.eval()
    student.eval()
    idx = torch.tensor([5, 2, 17, 9])
    batch = ds.take(idx)
    with torch.no_grad():
        zs, zt = student(batch["x"]), teacher(batch["x"])
    for k in (257, 8):
        meta = write_lm_cache(teacher, ds, tok, k, tmp_path / f"c{k}", batch_size=10, log=lambda s: None)
        assert meta["bytes_per_token"] == 4 * k
        cached = LMCachedTeacher(tmp_path / f"c{k}", ds)(batch)
        assert cached.topk_indices.shape == (4, 16, k)
        for kind in ("forward_kl", "reverse_kl", "jsd"):
            live = token_loss(kind, zs, TeacherOutput(zt), batch["y"], top_k=k)
            got = token_loss(kind, zs, cached, batch["y"])
            torch.testing.assert_close(got, live, rtol=3e-3, atol=3e-3)  # float16 log-probabilities
            if k == 257:  # every token kept: the live full-vocabulary loss
                full = token_loss(kind, zs, TeacherOutput(zt), batch["y"])
                torch.testing.assert_close(got, full, rtol=3e-3, atol=3e-3)
    # reused when it matches; another teacher, k or data is refused
    write_lm_cache(teacher, ds, tok, 8, tmp_path / "c8", log=lambda s: None)
    with pytest.raises(ConfigError, match="teacher"):
        write_lm_cache(student, ds, tok, 8, tmp_path / "c8", log=lambda s: None)
    with pytest.raises(ConfigError, match="k"):
        write_lm_cache(teacher, ds, tok, 9, tmp_path / "c8", log=lambda s: None)
    with pytest.raises(DataError, match="other token data"):
        LMCachedTeacher(tmp_path / "c8", ds.select(torch.arange(3)))


def test_run_from_teacher_cache(corpus, tmp_path, teacher_dir):
    t = {"model": f"hf:{teacher_dir}"}
    live = run_lm(_config(corpus, tmp_path, teacher=t, train={"epochs": 1}, output={"name": "live"}), log=lambda s: None)
    full = run_lm(_config(corpus, tmp_path, teacher=t, train={"epochs": 1}, output={"name": "full"},
                          lm={"cache_k": 257}), log=lambda s: None)
    assert full["teacher"]["cache"]["k"] == 257
    # the whole vocabulary cached in float16: the same training as the live teacher, to rounding
    assert abs(full["final"]["val"]["nll"] - live["final"]["val"]["nll"]) < 2e-3
    with pytest.raises(ConfigError, match="supervised"):
        _config(corpus, tmp_path, lm={"cache_k": 8, "regime": "on_policy"})


def test_cli_train_runs_an_lm_config(corpus, tmp_path, teacher_dir, capsys):
    import yaml

    from kdistill.cli import main

    cfg = _config(corpus, tmp_path, teacher={"model": f"hf:{teacher_dir}"}, train={"epochs": 1},
                  method=[{"name": "skew_kl", "alpha": 0.1}, {"name": "ce", "weight": 0.5}])
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["train", str(path)]) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "causal-LM run" in out and f"{res['final']['val']['ppl']:.3f}" in out
    assert {"train_loss_skew_kl", "train_loss_ce"} <= set(json.loads(
        (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0]))
    # kdistill eval re-evaluates the saved student: the same validation numbers
    assert main(["eval", str(tmp_path / "run")]) == 0
    again = json.loads(capsys.readouterr().out)
    assert abs(again["val"]["nll"] - res["final"]["val"]["nll"]) < 1e-9 and "teacher_val" in again
    # a bad LM config is one message and a non-zero exit, not a traceback
    assert main(["train", str(path), "--set", "lm.regime=offline"]) != 0
    assert "lm.regime" in capsys.readouterr().err


def test_on_policy_resume_draws_the_same(corpus, tmp_path, teacher_dir):
    """The draw counter is checkpointed: 1 epoch + --resume to 2 equals 2 epochs at once."""
    def cfg(name, epochs):
        return _config(corpus, tmp_path, method={"name": "reverse_kl"}, teacher={"model": f"hf:{teacher_dir}"},
                       data={"max_blocks": 48}, lm={"regime": "on_policy", "lmbda": 0.5, "max_new_tokens": 4},
                       train={"epochs": epochs, "schedule": "constant"}, output={"name": name})

    run_lm(cfg("a", 1), log=lambda s: None)
    resumed = run_lm(cfg("a", 2), resume=True, log=lambda s: None)
    straight = run_lm(cfg("b", 2), log=lambda s: None)
    assert resumed["on_policy_draws"] == straight["on_policy_draws"] == straight["steps"]
    assert resumed["final"]["val"]["nll"] == straight["final"]["val"]["nll"]
