"""``kdistill eval RUN_DIR``: re-evaluate a saved run's student (and teacher) on its test set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .config import load_config
from .engine.checkpoint import load_into, load_weights
from .engine.run import prepare_data
from .errors import CheckpointError, ConfigError
from .metrics import classification_metrics, predict_logits
from .models import create_model


def load_run_model(folder: str | Path, trust: bool = False) -> torch.nn.Module:
    """Rebuild the network saved in a run folder (``model.json`` + ``model.safetensors``)."""
    folder = Path(folder)
    try:
        rec = json.loads((folder / "model.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder} has no model.json: the run did not finish (nothing to load).") from None
    except ValueError:
        raise CheckpointError(f"{folder / 'model.json'} is damaged (not valid JSON).") from None
    if not (folder / "model.safetensors").is_file():
        raise CheckpointError(f"{folder} has no model.safetensors: the run did not finish.")
    model = create_model(rec["model"], rec["num_classes"], tuple(rec["input_shape"]), **rec.get("kwargs", {}))
    load_into(model, load_weights(folder / "model.safetensors", trust=trust), rec["model"])
    return model.eval()


def evaluate_run(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml).")
    cfg = load_config(run_dir / "config.yaml")
    data = prepare_data(cfg)
    student = load_run_model(run_dir)
    s_logits = predict_logits(student, data.test.x)
    out: dict[str, Any] = {"run_dir": str(run_dir)}
    t_logits = None
    teacher_dir = run_dir / "teacher"
    if (teacher_dir / "model.json").is_file():
        t_logits = predict_logits(load_run_model(teacher_dir), data.test.x)
        out["teacher"] = classification_metrics(t_logits, data.test.y)
    elif cfg.teacher is not None and cfg.teacher.model and cfg.teacher.checkpoint:
        teacher = create_model(cfg.teacher.model, data.num_classes, data.input_shape, **cfg.teacher.kwargs)
        load_into(teacher, load_weights(cfg.teacher.checkpoint), "teacher")
        t_logits = predict_logits(teacher, data.test.x)
        out["teacher"] = classification_metrics(t_logits, data.test.y)
    out["student"] = classification_metrics(s_logits, data.test.y, t_logits)
    return out
