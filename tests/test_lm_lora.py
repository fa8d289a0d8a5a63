"""LoRA students (issue 27 item 3): only the adapters train; a finished student is saved
as a merged Hugging Face folder (same logits as the adapted model) and as an adapter
(adapter_config.json + weights); --resume continues exactly; cached sampling works."""

from __future__ import annotations

import json
import random

import pytest
import torch

pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from kdistill.config import load_config  # noqa: E402
from kdistill.errors import ConfigError  # noqa: E402
from kdistill.lm import ByteTokenizer, build_causal_lm  # noqa: E402
from kdistill.lm.chunked import LMDistiller, decoder_and_head  # noqa: E402
from kdistill.lm.generate import sample  # noqa: E402
from kdistill.lm.lora import apply_lora  # noqa: E402
from kdistill.methods import create  # noqa: E402
from kdistill.tasks.causal_lm.run import run_lm  # noqa: E402

TINY = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64}
LORA = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"]}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    words = "the cat sat on a mat and the dog ran to the park while birds sang".split()
    path = tmp_path_factory.mktemp("text") / "t.txt"
    path.write_text("".join(" ".join(rng.choice(words) for _ in range(6)) + ".\n%\n" for _ in range(60)))
    return path


def _lora_student(seed=0):
    student, _ = build_causal_lm("hf-config", TINY, 257, seed=3)
    record = apply_lora(student, LORA, seed)
    return student, record


def test_only_adapters_train():
    student, record = _lora_student()
    teacher, _ = build_causal_lm("hf-config", TINY, 257, seed=4)
    trainable = {n: p for n, p in student.named_parameters() if p.requires_grad}
    # q_proj 16->16, v_proj 16->16, down_proj 32->16: r * (in + out) each
    assert record["trainable_params"] == 4 * (32 + 32 + 48) == sum(p.numel() for p in trainable.values())
    assert trainable and all("lora_" in n for n in trainable)
    d = LMDistiller.wrap(create("forward_kl", student, teacher), "auto")
    assert decoder_and_head(student) is not None  # the chunked path works through the adapters
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    opt = torch.optim.AdamW(d.trainable_parameters(), lr=0.05)
    assert {id(p) for p in d.trainable_parameters()} == {id(p) for p in trainable.values()}
    x = torch.randint(0, 257, (4, 12), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        opt.zero_grad()
        d({"x": x, "y": x.roll(-1, 1)})["loss"].backward()
        opt.step()
    for n, p in student.named_parameters():
        assert torch.equal(p, before[n]) != (n in trainable), n  # adapters moved, nothing else did


def test_merged_folder_and_adapter_give_the_same_logits(tmp_path):
    student, _ = _lora_student(1)
    with torch.no_grad():  # adapters away from their zero start
        for n, p in student.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    student.eval()
    x = torch.randint(0, 257, (2, 10), generator=torch.Generator().manual_seed(1))
    want = student(x)
    base, _ = build_causal_lm("hf-config", TINY, 257, seed=3)
    assert (base(x) - want).abs().max() > 1e-2
    student.save(tmp_path / "s", ByteTokenizer())
    assert (tmp_path / "s" / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "s" / "adapter" / "adapter_model.safetensors").is_file()
    merged, _ = build_causal_lm(f"hf:{tmp_path / 's'}", {}, 257)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged.eval()(x), want, atol=1e-5, rtol=1e-5)
    # the adapter on its base
    again = peft.PeftModel.from_pretrained(base.hf, str(tmp_path / "s" / "adapter"))
    torch.testing.assert_close(again.eval()(input_ids=x).logits, want, atol=1e-5, rtol=1e-5)
    # the training model itself stayed unmerged and adapted
    assert any("lora_A" in n for n, _ in student.named_parameters())
    # cached sampling through the adapters equals the uncached loop
    p = x[:, :4]
    assert torch.equal(sample(student, p, 8, 0.9, torch.Generator().manual_seed(0)),
                       sample(student, p, 8, 0.9, torch.Generator().manual_seed(0), cache=False))


def _config(corpus, tmp_path, name, epochs, teacher):
    return load_config(base={
        "task": "causal-lm", "tokenizer": "byte",
        "data": {"train": str(corpus), "block_size": 24, "batch_size": 16, "val_split": 0.2, "separator": "%"},
        "teacher": {"model": f"hf:{teacher}"},
        "student": {"model": "hf-config", "kwargs": TINY, "peft": LORA},
        "method": {"name": "forward_kl"},
        "lm": {"prompt_tokens": 6},
        "train": {"epochs": epochs, "lr": 0.01, "device": "cpu", "progress": False, "seed": 0,
                  "schedule": "constant", "deterministic": True},
        "output": {"dir": str(tmp_path), "name": name},
    })


def test_lora_run_saves_both_and_resumes_exactly(corpus, tmp_path):
    t, _ = build_causal_lm("hf-config", dict(TINY, hidden_size=32), 257, seed=9)
    t.save(tmp_path / "teacher", ByteTokenizer())
    teacher = tmp_path / "teacher"
    res = run_lm(_config(corpus, tmp_path, "a", 1, teacher), log=lambda s: None)
    assert res["student"]["trainable_params"] == 4 * (32 + 32 + 48) and res["student"]["peft"]["r"] == 4
    resumed = run_lm(_config(corpus, tmp_path, "a", 2, teacher), resume=True, log=lambda s: None)
    straight = run_lm(_config(corpus, tmp_path, "b", 2, teacher), log=lambda s: None)
    assert resumed["final"]["val"]["nll"] == straight["final"]["val"]["nll"]
    folder = tmp_path / "b" / "student"
    assert json.loads((folder / "adapter" / "adapter_config.json").read_text())["r"] == 4
    merged, _ = build_causal_lm(f"hf:{folder}", {}, 257)
    from kdistill.lm import load_text_dataset
    from kdistill.lm.metrics import lm_metrics

    text = load_text_dataset(str(corpus), ByteTokenizer(), block_size=24, prompt_tokens=6, separator="%")
    from kdistill.data import split

    _, val = split(text, 0.2, 0)  # the run's validation rows (val_split 0.2, split_seed 0)
    assert abs(lm_metrics(merged, val, 64, "cpu")["nll"] - straight["final"]["val"]["nll"]) < 1e-5


def test_bad_peft_settings(corpus, tmp_path):
    raw = {"task": "causal-lm", "data": {"train": "t.txt"}, "teacher": {"model": "hf:t", "peft": {"r": 4}},
           "student": {"model": "hf-config"}}
    with pytest.raises(ConfigError, match="teacher.peft"):
        load_config(base=raw)
    with pytest.raises(ConfigError, match="r"):
        load_config(base={**raw, "teacher": None, "student": {"model": "hf-config", "peft": {"r": 0}}})
    student, _ = build_causal_lm("hf-config", TINY, 257, seed=3)
    with pytest.raises(ConfigError, match="student.peft"):
        apply_lora(student, {**LORA, "target_modules": ["no_such_layer"]}, 0)
