"""``kdistill eval RUN_DIR``: re-evaluate a saved run's student (and teacher) on its test set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import load_config
from .errors import ConfigError
from .metrics import classification_metrics, predict_logits
from .runs import load_saved, prepare_data
from .teachers import TEACHER_KINDS


def evaluate_run(run_dir: str | Path, trust_code: bool = False) -> dict[str, Any]:
    """Test-set metrics of the run's student (and teacher). ``trust_code``: allow the run
    folder's ``model.json`` or ``config.yaml`` to name an importable model factory."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml).")
    cfg = load_config(run_dir / "config.yaml")
    data = prepare_data(cfg)
    student, _ = load_saved(run_dir, "student", trust_code)
    s_logits = predict_logits(student, data.test)
    labels = data.test.labels()  # after reading the images: a skipped one reads -1, not scored
    out: dict[str, Any] = {"run_dir": str(run_dir)}
    t_logits = None
    teacher_dir = run_dir / "teacher"
    if (teacher_dir / "model.json").is_file():
        t_logits = predict_logits(load_saved(teacher_dir, "teacher", trust_code)[0], data.test)
        out["teacher"] = classification_metrics(t_logits, labels)
    elif (teacher := _configured_teacher(cfg, data, trust_code, run_dir)) is not None:
        t_logits = predict_logits(teacher, data.test)
        out["teacher"] = classification_metrics(t_logits, labels)
    out["student"] = classification_metrics(s_logits, labels, t_logits)
    return out


def _configured_teacher(cfg, data, trust_code, run_dir: Path):
    """The trained teacher network the run's config names, as its kind finds it (hook
    ``from_checkpoints``); None when the kind has none or it is not one network."""
    if cfg.teacher is None:
        return None
    hook = TEACHER_KINDS.get(cfg.teacher.kind).from_checkpoints
    teacher = hook(cfg, data, trust_code, str(run_dir / "config.yaml")) if hook is not None else None
    return getattr(teacher, "module", None)
