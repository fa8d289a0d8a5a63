"""Causal language models from Hugging Face ``transformers``, and their tokenizers.

Models: ``hf:PATH`` (a local folder: ``config.json``, weights, tokenizer; loaded with
``local_files_only``, never from the hub, never with remote code) or ``hf-config`` (a
config built in the process from ``model_type`` and settings: how tests and demos make
tiny Llama / GPT-2 models without downloads).

Tokenizers: ``byte`` (the built-in byte-level tokenizer: 256 byte tokens plus end-of-text,
nothing to train or download) or a Hugging Face tokenizer from a local folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..safe_read import refuse_pickled_weights, remote_code_allowed

BYTE_FILE = "kdistill_tokenizer.json"


def require_transformers():
    try:
        import transformers
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "Language-model distillation needs the 'lm' extra: pip install 'kdistill[lm]' "
            "(transformers, tokenizers)."
        ) from None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per loaded or saved shard is noise in a run's log
    return transformers


class ByteTokenizer:
    """Bytes of UTF-8 text as tokens 0..255, end-of-text 256 (vocabulary 257)."""

    kind = "byte"
    eos_id = 256
    vocab_size = 257
    #: none: chat records use kdistill.lm.data's built-in template
    chat_template = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def identity(self) -> dict[str, Any]:
        return {"kind": "byte", "vocab_size": self.vocab_size, "eos": self.eos_id}

    def save(self, folder: Path) -> None:
        (Path(folder) / BYTE_FILE).write_text(json.dumps(self.identity()))


class HFTokenizer:
    """A Hugging Face tokenizer from a local folder (``AutoTokenizer``, local files only)."""

    kind = "hf"

    def __init__(self, path: str | Path):
        transformers = require_transformers()
        try:
            self.tok = transformers.AutoTokenizer.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=remote_code_allowed())
        except (OSError, ValueError) as e:
            raise ConfigError(f"No tokenizer could be read from {str(path)!r}: {e}") from None
        eos = self.tok.eos_token_id
        if eos is None:
            raise ConfigError(f"The tokenizer in {str(path)!r} has no end-of-text (eos) token; set one and save it.")
        self.eos_id = int(eos)
        self.vocab_size = len(self.tok)

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=True)

    @property
    def chat_template(self) -> str | None:
        """The tokenizer's chat template (Jinja), or ``None``."""
        return getattr(self.tok, "chat_template", None) or None

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """A conversation as text, through the chat template."""
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def identity(self) -> dict[str, Any]:
        vocab = self.tok.get_vocab()
        return {"kind": "hf", "vocab": sorted(vocab.items(), key=lambda kv: kv[1]), "eos": self.eos_id}

    def save(self, folder: Path) -> None:
        self.tok.save_pretrained(str(folder))


def load_tokenizer(spec: str):
    """``byte`` or ``hf:PATH`` (a folder saved by kdistill with a byte tokenizer counts too)."""
    if spec == "byte":
        return ByteTokenizer()
    path = Path(spec.removeprefix("hf:"))
    if (path / BYTE_FILE).is_file():
        return ByteTokenizer()
    return HFTokenizer(path)


def folder_tokenizer(spec: str):
    """The tokenizer a model's ``hf:`` folder ships, or ``None`` (no folder, or none inside)."""
    if not spec.startswith("hf:"):
        return None
    path = Path(spec.removeprefix("hf:"))
    if (path / BYTE_FILE).is_file():
        return ByteTokenizer()
    if any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        return HFTokenizer(path)
    return None


def check_same_tokenizer(teacher_tok, student_tok, regime: str) -> None:
    """Refuse a teacher and a student whose tokenizers differ (token-level KD would compare
    distributions over different vocabularies: silently wrong)."""
    if teacher_tok is None or student_tok is None or regime == "sequence":
        return
    if teacher_tok.identity() != student_tok.identity():
        raise ConfigError(
            "The teacher's tokenizer differs from the student's: token-level distillation compares "
            "next-token distributions over one vocabulary and would be silently wrong. Give both models "
            "the same tokenizer (the 'tokenizer' setting), or use sequence-level KD (lm.regime: sequence), "
            "which passes text between them and needs no shared vocabulary."
        )


class CausalLM(nn.Module):
    """A Hugging Face causal LM as kdistill sees a network: token ids ``(N, L)`` in,
    next-token logits ``(N, L, V)`` out, ``V`` the tokenizer's vocabulary (a model's
    embedding may be padded beyond it: those logits are dropped).
    """

    def __init__(self, hf_model: nn.Module, vocab_size: int):
        super().__init__()
        self.hf = hf_model
        self.vocab_size = int(vocab_size)
        n_emb = hf_model.get_input_embeddings().weight.shape[0]
        if n_emb < self.vocab_size:
            raise ConfigError(
                f"The model's embedding has {n_emb} rows but the tokenizer has {self.vocab_size} tokens; "
                "build the model with vocab_size at least the tokenizer's."
            )

    def forward(self, input_ids: Tensor) -> Tensor:
        out = self.hf(input_ids=input_ids.long(), use_cache=False)
        logits = out.logits
        # no slice (a view) unless the embedding is padded: FSDP warns about returned views
        return logits if logits.shape[-1] == self.vocab_size else logits[..., : self.vocab_size]

    def gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass (Hugging Face's non-reentrant
        checkpointing of each decoder layer; active in training mode only)."""
        if not getattr(self.hf, "supports_gradient_checkpointing", False):
            raise ConfigError(f"{type(self.hf).__name__} does not support gradient checkpointing; "
                              "set lm.gradient_checkpointing: false.")
        self.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def save(self, folder: Path, tokenizer) -> None:
        from .lora import is_peft_model, save_lora

        if is_peft_model(self.hf):  # a LoRA student: the merged model, and the adapter in folder/adapter
            return save_lora(self, folder, tokenizer)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(str(folder))
        tokenizer.save(folder)


def build_causal_lm(model: str, kwargs: dict[str, Any], vocab_size: int, seed: int = 0,
                    eos_id: int | None = None) -> tuple[CausalLM, dict]:
    """A :class:`CausalLM` (in training mode) and its record (kind, source, parameter count).

    An ``hf-config`` model gets ``vocab_size`` and ``bos/eos_token_id`` from the tokenizer
    unless its kwargs set them, and untied input/output embeddings unless they say
    otherwise; ``seed`` fixes its initialisation.
    """
    transformers = require_transformers()
    if model.startswith("hf:"):
        path = Path(model.removeprefix("hf:"))
        if not (path / "config.json").is_file():
            inside = [f"hf:{path / d}" for d in ("student", "teacher", "teacher/model") if (path / d / "config.json").is_file()]
            hint = f" It is a run folder: its models are {' and '.join(inside)}." if inside else ""
            raise ConfigError(f"{str(path)!r} is not a Hugging Face model folder (no config.json).{hint}")
        refuse_pickled_weights(path, ConfigError)
        try:
            hf = transformers.AutoModelForCausalLM.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=remote_code_allowed(), dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise ConfigError(f"The model in {str(path)!r} could not be loaded: {e}") from None
        record = {"model": model}
    else:
        kw = dict(kwargs)
        if model.startswith("hf-config:"):
            try:
                kw.update(json.loads(model.removeprefix("hf-config:")))
            except ValueError as e:
                raise ConfigError(f"hf-config:{{...}} must hold a JSON object: {e}") from None
        model_type = kw.pop("model_type", None)
        if model_type is None:
            raise ConfigError("An hf-config model needs 'model_type' (e.g. llama, gpt2) among its kwargs.")
        kw.setdefault("vocab_size", vocab_size)
        kw.setdefault("tie_word_embeddings", False)
        if eos_id is not None:
            kw.setdefault("bos_token_id", eos_id)
            kw.setdefault("eos_token_id", eos_id)
        try:
            config = transformers.AutoConfig.for_model(model_type, **kw)
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError(f"hf-config {model_type!r}: {e}") from None
        torch.manual_seed(seed)
        hf = transformers.AutoModelForCausalLM.from_config(config)
        record = {"model": "hf-config", "kwargs": {"model_type": model_type, **kw}}
    lm = CausalLM(hf, vocab_size)
    lm.train()
    record["params"] = sum(p.numel() for p in lm.parameters())
    return lm, record
