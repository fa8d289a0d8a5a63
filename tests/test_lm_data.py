"""Causal-LM data beyond plain text: chat records (built-in and tokenizer templates, loss on
assistant turns only), local Hugging Face datasets (save_to_disk, parquet, arrow) read
like JSONL, column mapping, and one clear error per bad input. Tiny data, no downloads."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from kdistill.config import load_config  # noqa: E402
from kdistill.errors import ConfigError, DataError  # noqa: E402
from kdistill.lm import ByteTokenizer, load_text_dataset  # noqa: E402
from kdistill.lm.data import chat_tokens, records_dataset  # noqa: E402

CHAT = [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "yo"}, {"role": "user", "content": "how are you"},
                  {"role": "assistant", "content": "fine"}]},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hi you"}]},
]


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _same(a, b):
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.prompt_len, b.prompt_len)


def test_chat_masking_exact_with_the_builtin_template():
    tok = ByteTokenizer()
    enc = tok.encode
    ds = records_dataset(CHAT[:1], tok, block_size=96, name="chat")
    head = enc("<|system|>\nBe brief.\n<|user|>\nhi\n<|assistant|>\n")
    mid = enc("<|user|>\nhow are you\n<|assistant|>\n")
    seq = head + enc("yo") + [tok.eos_id] + mid + enc("fine") + [tok.eos_id]
    assert ds.x[0, : len(seq) - 1].tolist() == seq[:-1]
    assert (ds.x[0, len(seq) - 1:] == tok.eos_id).all()  # right padding
    # y[t] is seq[t+1] exactly where seq[t+1] is an assistant token (content or its end-of-text)
    a1 = set(range(len(head), len(head) + 3))  # "yo" + eos
    a2 = set(range(len(head) + 3 + len(mid), len(seq)))  # "fine" + eos
    want = [seq[t + 1] if t + 1 in a1 | a2 else -100 for t in range(96)]
    assert ds.y[0].tolist() == want
    kept = ds.y[0][ds.y[0] != -100].tolist()
    assert kept == enc("yo") + [tok.eos_id] + enc("fine") + [tok.eos_id]
    assert tok.decode(kept) == "yofine"  # the assistant text, nothing of the system or user turns
    # the prompt (where sequence-level / on-policy generation starts): all before the last reply
    assert ds.prompt_len.tolist() == [len(head) + 3 + len(mid)]


def test_chat_cut_by_block_size_like_a_long_completion():
    tok = ByteTokenizer()
    ids, target, plen = chat_tokens(CHAT[0]["messages"], tok)
    ds = records_dataset(CHAT[:1], tok, block_size=plen + 2, name="chat")
    assert ds.x[0].tolist() == ids[: plen + 2]
    assert ds.targets() == 3 + 3  # "yo" + end-of-text, then "fin": the rest of "fine" is cut
    assert ds.y[0, -1] == ids[plen + 2] == tok.encode("n")[0] and ds.prompt_len.tolist() == [plen]
    # the block ends inside the first reply: the prompt (up to the last reply) is clipped to the block
    first_end = len(tok.encode("<|system|>\nBe brief.\n<|user|>\nhi\n<|assistant|>\nyo")) + 1
    cut = records_dataset(CHAT[:1], tok, block_size=first_end - 1, name="chat")
    assert cut.prompt_len.tolist() == [first_end - 2] and cut.targets() == 3
    with pytest.raises(DataError, match="cut off"):  # no assistant token inside the block
        records_dataset(CHAT[:1], tok, block_size=8, name="chat")


def _template_tokenizer(folder, template):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["system", "user", "assistant", "hi", "yo", "how", "are", "you", "fine", "Be", "brief."]
    t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<eos>", "<unk>", *words])}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.add_special_tokens(["<s>", "</s>"])
    hf = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<eos>", unk_token="<unk>")
    hf.chat_template = template
    hf.save_pretrained(str(folder))
    from kdistill.lm.models import HFTokenizer

    return HFTokenizer(folder)


TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }} {{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant {% endif %}")


def test_a_tokenizers_chat_template_renders_the_records(tmp_path):
    tok = _template_tokenizer(tmp_path / "tok", TEMPLATE)
    v = tok.tok.get_vocab()
    s, e, eos = v["<s>"], v["</s>"], tok.eos_id
    ds = records_dataset(CHAT[1:], tok, block_size=12, name="chat")
    seq = [s, v["user"], v["hi"], e, s, v["assistant"], v["hi"], v["you"], e, eos]
    assert ds.x[0].tolist() == seq[:-1] + [eos] * 3  # the template's markers, not the built-in "<|user|>"
    # targets: the reply and the template's end of turn, then the end-of-text the template lacks
    assert ds.y[0].tolist() == [-100] * 5 + [v["hi"], v["you"], e, eos] + [-100] * 3
    assert ds.prompt_len.tolist() == [6]  # "<s>user hi</s><s>assistant": the generation prompt
    assert ds.prompt_len.tolist() == [len(tok.encode(tok.render_chat(CHAT[1]["messages"][:1], True)))]
    # two replies: both trained, the user turn between them not
    two = records_dataset(CHAT[:1], tok, block_size=24, name="chat")
    kept = two.y[0][two.y[0] != -100].tolist()
    assert kept == [v["yo"], e, v["fine"], e, eos]


def test_a_template_that_rewrites_earlier_turns_is_refused(tmp_path):
    tok = _template_tokenizer(tmp_path / "tok", "{{ messages[-1]['content'] }}")
    with pytest.raises(DataError, match="rewrites earlier turns"):
        records_dataset(CHAT[:1], tok, block_size=12, name="chat")


def test_jsonl_save_to_disk_parquet_and_arrow_give_identical_tensors(tmp_path):
    tok = ByteTokenizer()
    rows = [{"conv": r["messages"], "id": i} for i, r in enumerate(CHAT)]
    want = records_dataset(CHAT, tok, block_size=64, name="chat")
    cols = {"messages": "conv"}
    jsonl = load_text_dataset(str(_write_jsonl(tmp_path / "c.jsonl", rows)), tok, 64, columns=cols)
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "disk"))
    ds.to_parquet(str(tmp_path / "c.parquet"))
    disk = load_text_dataset(str(tmp_path / "disk"), tok, 64, columns=cols)
    parquet = load_text_dataset(str(tmp_path / "c.parquet"), tok, 64, columns=cols)
    arrow = load_text_dataset(str(next((tmp_path / "disk").glob("*.arrow"))), tok, 64, columns=cols)
    for got in (jsonl, disk, parquet, arrow):
        _same(got, want)
    # unnamed columns: 'messages', else 'prompt' + 'completion', else 'text', found by name
    pc = [{"prompt": "Q: hi", "completion": " ok", "text": "unused"}, {"prompt": "Q: 2+2", "completion": " 4", "text": ""}]
    datasets.Dataset.from_list(pc).to_parquet(str(tmp_path / "pc" / "part-0.parquet"))
    _same(load_text_dataset(str(tmp_path / "pc"), tok, 16),
          records_dataset([{k: r[k] for k in ("prompt", "completion")} for r in pc], tok, 16, "pc"))
    _same(load_text_dataset(str(tmp_path / "pc"), tok, 16, columns={"text": "prompt"}),
          records_dataset([{"text": r["prompt"]} for r in pc], tok, 16, "pc"))


def test_config_maps_columns():
    def cfg(*overrides):  # a fresh base each time: overrides write into the base's sections
        base = {"task": "causal-lm", "data": {"train": "x.parquet"}, "tokenizer": "byte",
                "student": {"model": "hf-config"}}
        return load_config(base=base, overrides=list(overrides))

    assert cfg("data.messages_column=conv").data.columns() == {"messages": "conv"}
    assert cfg("data.completion_column=answer").data.columns() == {"prompt": "prompt", "completion": "answer"}
    assert cfg("data.text_column=body").data.columns() == {"text": "body"}
    assert cfg().data.columns() is None
    with pytest.raises(ConfigError, match="data.text_column and data.messages_column name different kinds"):
        cfg("data.text_column=body", "data.messages_column=conv")
    with pytest.raises(ConfigError, match="text_colum"):
        cfg("data.text_colum=body")


def test_each_bad_input_has_one_clear_message(tmp_path):
    tok = ByteTokenizer()
    no_reply = [{"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]}]
    with pytest.raises(DataError, match=r"record 0: the conversation has no assistant turn"):
        records_dataset(no_reply, tok, 32, "c")
    bot = [{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}]
    with pytest.raises(DataError, match=r"message 1: role 'bot' is not one of system, user, assistant"):
        records_dataset(bot, tok, 32, "c")
    with pytest.raises(DataError, match=r"'content' must be a string, got list"):
        records_dataset([{"messages": [{"role": "assistant", "content": ["yo"]}]}], tok, 32, "c")
    with pytest.raises(DataError, match=r"'messages' must be a non-empty list"):
        records_dataset([{"messages": []}], tok, 32, "c")
    # a missing column names the columns there are
    datasets.Dataset.from_list([{"conv": CHAT[1]["messages"], "id": 0}]).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(DataError, match=r"no column 'convo' \(data.messages_column\); the columns are "
                                        r"\['conv', 'id'\]\. Did you mean 'conv'"):
        load_text_dataset(str(tmp_path / "d"), tok, 32, columns={"messages": "convo"})
    with pytest.raises(DataError, match=r"no 'messages', 'prompt' and 'completion', or 'text' column among "
                                        r"\['conv', 'id'\]"):
        load_text_dataset(str(tmp_path / "d"), tok, 32)
    jsonl = _write_jsonl(tmp_path / "c.jsonl", [{"conv": CHAT[1]["messages"]}, {"messages": []}])
    with pytest.raises(DataError, match=r"record 1 has no 'conv' \(data.messages_column\); its keys are \['messages'\]"):
        load_text_dataset(str(jsonl), tok, 32, columns={"messages": "conv"})
    # empty inputs
    datasets.Dataset.from_dict({"text": []}).save_to_disk(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="the dataset has no rows"):
        load_text_dataset(str(tmp_path / "empty"), tok, 32)
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match="holds no records"):
        load_text_dataset(str(tmp_path / "e.jsonl"), tok, 32)
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a b"]})}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"holds the splits \['train'\]; point data.train"):
        load_text_dataset(str(tmp_path / "dd"), tok, 32)
    (tmp_path / "t.txt").write_text("some text " * 20)
    with pytest.raises(DataError, match="data.text_column name columns of a .jsonl file"):
        load_text_dataset(str(tmp_path / "t.txt"), tok, 32, columns={"text": "body"})


def test_cli_reports_a_bad_chat_record_in_one_line(tmp_path, capsys):
    import yaml

    from kdistill.cli import main

    bad = _write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    cfg = {"task": "causal-lm", "data": {"train": str(bad), "val": str(bad)}, "tokenizer": "byte",
           "student": {"model": "hf-config", "kwargs": {"model_type": "llama", "hidden_size": 8,
                                                        "intermediate_size": 8, "num_hidden_layers": 1,
                                                        "num_attention_heads": 1}},
           "output": {"dir": str(tmp_path), "name": "run"}}
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no assistant turn" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_sequence_level_run_prompts_a_chat_up_to_its_last_reply(tmp_path):
    """The teacher completes each conversation from its last assistant header: the transfer
    set's prompts are the chat's turns before the last reply."""
    from kdistill.tasks.causal_lm.run import run_lm

    recs = [{"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}]}
            for w in ("cat", "dog", "sun", "sea", "map", "pen", "cup", "hat")]
    data = _write_jsonl(tmp_path / "chat.jsonl", recs)
    tiny = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64}
    cfg = load_config(base={
        "task": "causal-lm", "data": {"train": str(data), "val": str(data), "block_size": 32, "batch_size": 8},
        "tokenizer": "byte", "teacher": {"model": "hf-config", "kwargs": tiny, "train": {"epochs": 1}},
        "student": {"model": "hf-config", "kwargs": tiny}, "method": {"name": "ce"},
        "lm": {"regime": "sequence", "max_new_tokens": 4},
        "train": {"epochs": 1, "device": "cpu", "progress": False, "seed": 0},
        "output": {"dir": str(tmp_path), "name": "run"}})
    run_lm(cfg, log=lambda s: None)
    tok = ByteTokenizer()
    lines = (tmp_path / "run" / "transfer.jsonl").read_text().splitlines()
    prompts = sorted(tok.decode(json.loads(line)["prompt_ids"]) for line in lines)
    assert prompts == sorted(f"<|user|>\nsay {r['messages'][1]['content']}\n<|assistant|>\n" for r in recs)
