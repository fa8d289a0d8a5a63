"""KV-cached generation (issue 27 item 1): the cached decoder draws the same tokens as the
uncached reference loop for the same seed, greedy and sampled, on Llama and GPT-2, and its
per-step logits equal a full forward's to 1e-5."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from kdistill.lm import build_causal_lm  # noqa: E402
from kdistill.lm.generate import _cache_kwargs, complete_rows, sample, supports_cache  # noqa: E402

LLAMA = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
GPT2 = {"model_type": "gpt2", "n_embd": 16, "n_layer": 2, "n_head": 2, "n_positions": 64}


@pytest.mark.parametrize("kwargs", [LLAMA, GPT2], ids=["llama", "gpt2"])
@pytest.mark.parametrize("temperature", [0.0, 0.9, 1.5])
def test_cached_sampling_equals_uncached(kwargs, temperature):
    model, _ = build_causal_lm("hf-config", kwargs, 257, seed=3)
    assert supports_cache(model)
    prompt = torch.randint(0, 256, (5, 7), generator=torch.Generator().manual_seed(1))
    ref = sample(model, prompt, 20, temperature, torch.Generator().manual_seed(11), cache=False)
    got = sample(model, prompt, 20, temperature, torch.Generator().manual_seed(11), cache=True)
    assert torch.equal(got, ref)
    assert got.shape == (5, 27) and torch.equal(got[:, :7], prompt)
    assert model.training  # the mode is restored
    if temperature > 0:  # another seed draws other tokens: the generator is used
        other = sample(model, prompt, 20, temperature, torch.Generator().manual_seed(12))
        assert not torch.equal(other, got)


def test_cached_step_logits_match_a_full_forward():
    model, _ = build_causal_lm("hf-config", LLAMA, 257, seed=4)
    model.eval()
    ids = torch.randint(0, 256, (3, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids)
        out = model.hf(input_ids=ids[:, :4], use_cache=True)
        steps = [out.logits[:, -1]]
        for t in range(4, 9):
            out = model.hf(input_ids=ids[:, t : t + 1], use_cache=True, **_cache_kwargs(out))
            steps.append(out.logits[:, -1])
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 3:9], atol=1e-5, rtol=0)


def test_cached_complete_rows_equal_uncached_with_mixed_prompt_lengths():
    model, _ = build_causal_lm("hf-config", LLAMA, 257, seed=5)
    x = torch.randint(0, 256, (6, 16), generator=torch.Generator().manual_seed(0))
    plen = torch.tensor([2, 5, 2, 9, 5, 16])

    def run(cache):
        import kdistill.lm.generate as gen

        orig = gen.sample
        gen.sample = lambda *a, **k: orig(*a, **k, cache=cache)
        try:
            return complete_rows(model, x, plen, 6, 0.9, torch.Generator().manual_seed(3), eos_id=256)
        finally:
            gen.sample = orig

    (xc, yc), (xr, yr) = run(True), run(False)
    assert torch.equal(xc, xr) and torch.equal(yc, yr)
    assert (yc[5] == -100).all()  # a full prompt leaves nothing to generate
    assert (yc[0, 1:7] != -100).all() and (yc[0, 7:] == -100).all()
