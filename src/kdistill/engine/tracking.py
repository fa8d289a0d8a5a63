"""Experiment tracking through Accelerate's tracker classes (TensorBoard, MLflow).

``metrics.jsonl`` is always written; ``train.log_with: [tensorboard, mlflow]`` also sends
every epoch row there, with the run's config as hyperparameters. Trackers are built
directly (not through ``Accelerator(log_with=...)``) because Accelerate keeps one global
state per process and a kdistill run trains several models (teacher, students, stages).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(tree, (list, tuple)):
        out[prefix[:-1]] = str(tree)
    else:
        out[prefix[:-1]] = tree if isinstance(tree, (int, float, str, bool)) else str(tree)
    return out


class Trackers:
    """The configured trackers of one training; no-ops when none are configured."""

    def __init__(self, names: list[str], run_dir: Path, config: dict[str, Any] | None = None):
        self.trackers = []
        for name in names:
            try:
                if name == "tensorboard":
                    from accelerate.tracking import TensorBoardTracker

                    t = TensorBoardTracker(run_dir.name, run_dir / "trackers")
                else:
                    from accelerate.tracking import MLflowTracker

                    t = MLflowTracker(run_dir.name, str(run_dir / "trackers" / "mlruns"))
                if hasattr(t, "start"):
                    t.start()
            except (ImportError, ModuleNotFoundError, AttributeError) as e:
                raise ConfigError(
                    f"train.log_with names {name!r}, which is not installed ({e}); pip install {name}."
                ) from None
            if config:
                t.store_init_configuration({k: v for k, v in _flatten(config).items() if v is not None})
            self.trackers.append(t)

    def log(self, row: dict[str, Any], step: int) -> None:
        values = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for t in self.trackers:
            t.log(values, step=step)

    def finish(self) -> None:
        for t in self.trackers:
            t.finish()
        self.trackers = []
