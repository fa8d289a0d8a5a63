"""Training: the Trainer (on HF Accelerate), checkpoints and whole runs."""

from .checkpoint import find_checkpoint, load_weights, save_checkpoint
from .run import run_experiment
from .trainer import Trainer

__all__ = ["Trainer", "find_checkpoint", "load_weights", "run_experiment", "save_checkpoint"]
