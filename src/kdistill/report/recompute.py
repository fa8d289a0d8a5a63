"""Rebuild a run's saved networks and data, for what ``results.json`` does not hold.

Reliability diagrams and per-class accuracy need logits. Rather than storing predictions in
every run, the report rebuilds the student from ``model.json`` + ``model.safetensors``
(and the teacher from its record and checkpoint), regenerates the test set from
``config.yaml`` and checks it is the data the run trained on (the training-set fingerprint
in ``results.json``). Anything that cannot be rebuilt is reported, not guessed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import validate_config
from ..data import Dataset
from ..errors import KdistillError, UntrustedCodeError
from ..metrics import predict_logits
from ..runs import prepare_data, rebuild
from ..runs.experiment import cpu_latency
from ..safe_read import ModelRecord, read_json
from .tables import RunRecord


class RecomputeError(Exception):
    """What cannot be rebuilt, in words for the report."""


def build_saved_model(record: dict[str, Any], weights: Path, trust_code: Any = False, source: Any = None) -> nn.Module:
    """A zoo model from its ``model.json``-style record, with weights loaded (no pickle).
    A record naming an importable factory needs ``trust_code`` (the refusal is raised, not
    turned into a missing plot: the user must see it)."""
    if not all(k in record for k in ("model", "num_classes", "input_shape")):
        raise RecomputeError("model record incomplete (it lacks model, num_classes or input_shape)")
    try:
        return rebuild(record, weights, record["model"], trust_code=trust_code, source=source)
    except UntrustedCodeError:
        raise
    except KdistillError as e:
        raise RecomputeError(str(e)) from None


def student_model(run: RunRecord, trust_code: Any = False) -> nn.Module:
    weights = run.path / "model.safetensors"
    if not weights.is_file():
        raise RecomputeError(f"{run.name}: no model.safetensors")
    record = run.results["student"]
    source = run.path / "results.json"
    if (run.path / "model.json").is_file():
        source = run.path / "model.json"
        record = read_json(source, ModelRecord, error=RecomputeError)
    return build_saved_model(record, weights, trust_code, source)


def teacher_weights(run: RunRecord) -> Path | None:
    """The teacher's weight file: in the run, at its recorded checkpoint, or in a sibling cell."""
    own = run.path / "teacher" / "model.safetensors"
    if own.is_file():
        return own
    ckpt = run.teacher.get("checkpoint")
    if not ckpt:
        return None
    p = Path(ckpt)
    for cand in (p, run.path.parent / p.parent.parent.name / p.parent.name / p.name):
        if cand.is_file():
            return cand
    return None


def teacher_model(run: RunRecord, trust_code: Any = False) -> nn.Module:
    t = run.teacher
    if not t.get("model"):
        raise RecomputeError(f"{run.name}: the teacher is not a single saved model (ensemble or cache)")
    weights = teacher_weights(run)
    if weights is None:
        raise RecomputeError(f"{run.name}: the teacher's weights were not found")
    return build_saved_model(t, weights, trust_code, run.path / "results.json")


def test_data(run: RunRecord):
    """The run's test set, regenerated from its config and checked against its fingerprint."""
    try:
        cfg = validate_config(run.config)
        data = prepare_data(cfg)
    except KdistillError as e:
        raise RecomputeError(f"{run.name}: cannot rebuild its data ({e})") from None
    want = run.results["dataset"].get("fingerprint")
    if want and data.train.fingerprint() != want:
        raise RecomputeError(f"{run.name}: the data rebuilt from config.yaml differs from what it trained on")
    return data.test


@torch.no_grad()
def logits_of(model: nn.Module, data: Dataset, batch_size: int = 1024) -> Tensor:
    """The model's logits for every sample of ``data``, on the CPU."""
    return predict_logits(model, data, batch_size, torch.device("cpu"))


def measure_latency(model: nn.Module, input_shape) -> dict[str, Any]:
    """Median CPU latency at batch size 1, with the settings ``kdistill.runs`` uses for students."""
    return cpu_latency(model, input_shape)
