"""A causal-LM run's models against ``data.block_size`` and the tokenizer, read from their
configs before any model is built (used by the run and by ``--check``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...lm.models import folder_tokenizer, require_transformers
from .config import LMModelConfig, LMRunConfig

#: where a Hugging Face config keeps its longest sequence, by model family
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "n_ctx", "seq_length")


def model_settings(m: LMModelConfig) -> dict[str, Any]:
    """A model's Hugging Face config as a dict, without building the model: ``config.json``
    of an ``hf:`` folder, or ``model_type`` + kwargs of an ``hf-config`` one (its defaults
    filled in by transformers)."""
    if m.model.startswith("hf:"):
        f = Path(m.model.removeprefix("hf:")) / "config.json"
        try:
            return json.loads(f.read_text())
        except (OSError, ValueError):
            return {}  # building the model reports the missing or damaged folder
    kw = dict(m.kwargs)
    if m.model.startswith("hf-config:"):
        try:
            kw.update(json.loads(m.model.removeprefix("hf-config:")))
        except ValueError as e:
            raise ConfigError(f"hf-config:{{...}} must hold a JSON object: {e}") from None
    model_type = kw.pop("model_type", None)
    if model_type is None:
        raise ConfigError("An hf-config model needs 'model_type' (e.g. llama, gpt2) among its kwargs.")
    transformers = require_transformers()
    try:
        return transformers.AutoConfig.for_model(model_type, **kw).to_dict()
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"hf-config {model_type!r}: {e}") from None


def check_positions(cfg: LMRunConfig, tok) -> None:
    """Every model takes ``data.block_size`` tokens and the tokenizer's vocabulary; each
    mistake is one message naming the setting (not an ``IndexError`` in the first step)."""
    for what, m in (("student", cfg.student), ("teacher", cfg.teacher)):
        if m is None or getattr(m, "kind", None) is not None:  # a served or several teachers: no model here
            continue
        settings = model_settings(m)
        limit = next((settings[k] for k in POSITION_KEYS if isinstance(settings.get(k), int)), None)
        if limit is not None and cfg.data.block_size > limit:
            raise ConfigError(
                f"data.block_size {cfg.data.block_size} is longer than the {what}'s position limit {limit} "
                f"({next(k for k in POSITION_KEYS if settings.get(k) == limit)}); lower data.block_size or "
                f"raise {what}.kwargs.{next(k for k in POSITION_KEYS if settings.get(k) == limit)}.")
        vocab = settings.get("vocab_size")
        own_tok = folder_tokenizer(m.model)
        need = (own_tok or tok).vocab_size
        if isinstance(vocab, int) and vocab < need and not (what == "teacher" and cfg.lm.regime == "sequence"):
            raise ConfigError(f"The {what}'s vocab_size {vocab} is smaller than its tokenizer's {need} tokens; "
                              f"drop {what}.kwargs.vocab_size (it defaults to the tokenizer's) or raise it.")
