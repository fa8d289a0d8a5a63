"""The training engine: the Trainer, checkpoints, FSDP sharding and methods' first phases."""

from .checkpoint import find_checkpoint, load_weights, save_checkpoint
from .trainer import Trainer

__all__ = ["Trainer", "find_checkpoint", "load_weights", "save_checkpoint"]
