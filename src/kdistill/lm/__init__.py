"""Distilling causal language models (``task: causal-lm``): Hugging Face models from local
folders or in-process configs, text data from local files, token-level KD with the
methods ``forward_kl``, ``reverse_kl``, ``gkd``, ``skew_kl``, ``skew_reverse_kl``, ``tvd``
(and ``ce``), sequence-level KD and on-policy distillation. Needs the ``lm`` extra
(transformers, tokenizers); nothing here is imported by the image path."""

from .config import LMRunConfig, is_lm_config, load_lm_config
from .data import TokenDataset, load_text_dataset
from .experiment import run_lm
from .models import ByteTokenizer, CausalLM, build_causal_lm, load_tokenizer

__all__ = [
    "ByteTokenizer",
    "CausalLM",
    "LMRunConfig",
    "TokenDataset",
    "build_causal_lm",
    "is_lm_config",
    "load_lm_config",
    "load_text_dataset",
    "load_tokenizer",
    "run_lm",
]
