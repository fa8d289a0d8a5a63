"""One teacher trained once, then students learning from it: the causal-LM comparison that
``kdistill demo --lm`` and ``benchmarks/lm_fortunes.py`` both run.

Every model is a ``causal-lm`` task run (the run ``kdistill train`` makes) in a folder of ``out``:

* ``out/teacher``: the teacher, an ``hf-config`` model trained with cross-entropy; its
  weights are ``out/teacher/student`` (an ``hf:`` folder, :func:`teacher_model`);
* ``out/<name>``: one student each, reading that folder as its teacher, live or through
  one shared top-k cache (``out/cache-k<k>``, written by the first cached student and
  reused by the others: it is fingerprinted against the teacher, tokenizer and data).

A folder that already holds a finished run is read back, not trained again, and an
interrupted one continues (``resume``), so a long comparison can be stopped and restarted.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import load_config
from ..errors import DataError
from ..task import task_named

#: Debian's fortune files (package fortunes-min): fortunes, literature, riddles
FORTUNES = "/usr/share/games/fortunes"
#: the text files of fortunes-min (98,399 bytes); the larger ``fortunes`` package adds more
#: files to the same folder
FORTUNES_MIN = ("fortunes", "literature", "riddles")
SAMPLE_PROMPTS = ["Q:\tWhat is", "A fool"]


def fortunes_min(dest: str | Path, folder: str | Path | None = None, hint: str = "") -> Path:
    """Copy fortunes-min's three text files from ``folder`` (default :data:`FORTUNES`) into
    the folder ``dest`` (98 KB) and return it: the same corpus whether or not other fortune
    packages are installed too. ``hint`` ends the error message when they are missing."""
    src = Path(FORTUNES if folder is None else folder)
    missing = [n for n in FORTUNES_MIN if not (src / n).is_file()]
    if missing:
        raise DataError(f"Debian's fortune files are not installed ({src / missing[0]} is missing): "
                        f"install them with `apt-get install fortunes-min`{hint}.")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for n in FORTUNES_MIN:
        shutil.copyfile(src / n, dest / n)
    return dest


def llama(layers: int, width: int, positions: int = 256) -> dict[str, Any]:
    """A Llama-style ``hf-config`` model's settings: ``layers`` blocks of ``width``, an MLP of
    twice the width, one attention head per 32 channels (at least one)."""
    heads = max(1, width // 32)
    return {"model_type": "llama", "hidden_size": width, "intermediate_size": 2 * width,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads,
            "max_position_embeddings": positions}


def run_config(corpus: str | Path, out: str | Path, name: str, model: dict[str, Any], method: dict[str, Any],
               epochs: int, seed: int, teacher: str | None = None, lr: float = 3e-3, cache_k: int | None = None,
               cache_dir: str | Path | None = None, block_size: int = 128, batch_size: int = 16,
               sample_prompts: list[str] | None = None) -> dict[str, Any]:
    """The raw config of one run on ``corpus`` (byte tokens, ``%`` lines split documents, a
    fixed 10% validation split), in ``out/name``; ``cache_k`` reads ``teacher`` from a top-k
    cache in ``cache_dir`` (default ``out/cache-k<k>``)."""
    prompts = SAMPLE_PROMPTS if sample_prompts is None else sample_prompts
    lm: dict[str, Any] = {"sample_prompts": list(prompts), "max_new_tokens": 40}
    if cache_k:
        lm |= {"cache_k": cache_k, "cache_dir": str(cache_dir or Path(out) / f"cache-k{cache_k}")}
    return {
        "task": "causal-lm",
        "data": {"train": str(corpus), "separator": "%", "block_size": block_size, "batch_size": batch_size,
                 "val_split": 0.1, "split_seed": 0},
        "tokenizer": "byte",
        "teacher": {"model": teacher} if teacher else None,
        "student": {"model": "hf-config", "kwargs": model},
        "method": method,
        "lm": lm,
        "train": {"epochs": epochs, "lr": lr, "optimizer": "adamw", "weight_decay": 0.01, "schedule": "cosine",
                  "warmup_epochs": 1, "seed": seed, "device": "cpu", "progress": False, "grad_clip": 1.0},
        "output": {"dir": str(out), "name": name},
    }


def teacher_model(out: str | Path) -> str:
    """The trained teacher of a comparison in ``out``, as a model name (``hf:PATH``)."""
    return f"hf:{Path(out) / 'teacher' / 'student'}"


def _run(raw: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    done = Path(raw["output"]["dir"]) / raw["output"]["name"] / "results.json"
    if done.is_file():
        log(f"Reusing the finished run in {done.parent}.")
        return json.loads(done.read_text())
    cfg = load_config(base=raw)
    return task_named(cfg.task).run(cfg, resume=True, log=log)


def train_teacher(corpus: str | Path, out: str | Path, model: dict[str, Any], epochs: int, seed: int = 0,
                  log: Callable[[str], None] = print, **opts) -> dict[str, Any]:
    """Train the teacher with cross-entropy in ``out/teacher`` (``opts``: :func:`run_config`'s
    ``lr``, ``block_size``, ...); its results, with ``run_dir``."""
    return _run(run_config(corpus, out, "teacher", model, {"name": "ce"}, epochs, seed, **opts), log)


def train_student(corpus: str | Path, out: str | Path, name: str, model: dict[str, Any], method: dict[str, Any],
                  epochs: int, seed: int, cache_k: int | None = None, log: Callable[[str], None] = print,
                  **opts) -> dict[str, Any]:
    """Train one student in ``out/name`` from the teacher of ``out`` (trained first by
    :func:`train_teacher`); ``cache_k``: through the shared top-k cache."""
    raw = run_config(corpus, out, name, model, method, epochs, seed, teacher_model(out), cache_k=cache_k, **opts)
    return _run(raw, log)
