"""LoRA students through the ``peft`` library (``student.peft: {r, alpha, dropout,
target_modules}``).

The student's Hugging Face model is wrapped by ``peft.get_peft_model``: its weights are
frozen and low-rank adapters (``B A``, ``B`` zero at the start, so the adapted model
begins equal to its base) are added to the named linear layers; only the adapters train
(the distiller's optimizer takes parameters that require gradients). Checkpoints hold the
whole state (frozen base and adapters), so ``--resume`` continues as for a full student.

A finished LoRA student is saved twice: ``student/`` is the merged model (``W + (alpha /
r) B A``, an ordinary Hugging Face folder that ``hf:PATH``, ``kdistill eval`` and export
read), and ``student/adapter/`` the adapter alone (``adapter_config.json`` and
``adapter_model.safetensors``, for ``peft.PeftModel.from_pretrained`` on the base).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

ADAPTER_DIR = "adapter"


def require_peft():
    try:
        import peft
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("student.peft (a LoRA student) needs the 'peft' package: pip install peft") from None
    return peft


def is_peft_model(hf: nn.Module) -> bool:
    """Whether a Hugging Face model is wrapped by ``peft`` (without importing it)."""
    return hasattr(hf, "peft_config") and hasattr(hf, "merge_and_unload")


def apply_lora(student: nn.Module, spec: dict[str, Any], seed: int) -> dict[str, Any]:
    """Wrap ``student.hf`` (a :class:`~kdistill.lm.models.CausalLM`'s model) with LoRA
    adapters as ``spec`` says (``r``, ``alpha``, ``dropout``, ``target_modules``); the
    adapters' random half is drawn from ``seed``. Returns the record's additions."""
    peft = require_peft()
    cfg = peft.LoraConfig(r=int(spec["r"]), lora_alpha=float(spec["alpha"]), lora_dropout=float(spec["dropout"]),
                          target_modules=spec["target_modules"], task_type="CAUSAL_LM")
    torch.manual_seed(seed)
    try:
        student.hf = peft.get_peft_model(student.hf, cfg)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"student.peft: {e}") from None
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    return {"peft": {"kind": "lora", **spec}, "trainable_params": trainable}


def save_lora(student: nn.Module, folder: str | Path, tokenizer) -> None:
    """The merged model in ``folder`` and the adapter in ``folder/adapter`` (both with the
    tokenizer); the training model itself is left unmerged."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    student.hf.save_pretrained(str(folder / ADAPTER_DIR))
    tokenizer.save(folder / ADAPTER_DIR)
    merged = copy.deepcopy(student.hf).merge_and_unload()
    merged.save_pretrained(str(folder))
    tokenizer.save(folder)
