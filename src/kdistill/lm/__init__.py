"""The building blocks of the causal-LM task (``task: causal-lm``, :mod:`kdistill.tasks.causal_lm`):
Hugging Face models from local folders or in-process configs and the byte tokenizer
(:mod:`.models`), text data from local files (:mod:`.data`), sampling (:mod:`.generate`),
perplexity and token accuracy (:mod:`.metrics`) and on-policy distillation (:mod:`.onpolicy`);
the teacher's top-k token cache is in the one cache package (:mod:`kdistill.cache.tokens`). Needs the ``lm`` extra (transformers,
tokenizers); nothing here is imported by the image path. The run itself (config, teacher,
regimes, run folder) is the task's: :mod:`kdistill.tasks.causal_lm`."""

from .data import TokenDataset, load_text_dataset
from .models import ByteTokenizer, CausalLM, build_causal_lm, load_tokenizer

__all__ = [
    "ByteTokenizer",
    "CausalLM",
    "TokenDataset",
    "build_causal_lm",
    "load_text_dataset",
    "load_tokenizer",
]
