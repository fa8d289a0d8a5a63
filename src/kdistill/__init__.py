"""kdistill: knowledge distillation for PyTorch.

Turn a large model, or an ensemble of them, into a small, fast model that keeps most of
their accuracy (Hinton, Vinyals & Dean 2015 and the work after it).

    >>> import kdistill as kd
    >>> distiller = kd.methods.create("kd", student=student, teacher=teacher, temperature=4.0, alpha=0.9)
    >>> out = distiller(batch)   # {"loss", "logits", "loss_ce", "loss_kd"}
"""

from . import data, losses, methods, metrics, models, tasks  # tasks: registers image-classification, causal-lm
from .config import RunConfig, load_config
from .errors import KdistillError
from .losses import kd_loss, soft_targets
from .methods import Distiller, create
from .models import create_model
from .teachers import EnsembleTeacher, ModuleTeacher, TeacherOutput

__version__ = "0.1.0"


def __getattr__(name: str):
    # kd.train (kdistill.api) pulls in the trainer and Accelerate: imported on first use
    if name == "train":
        from .api import train

        return train
    # `kd.quantize(...)`: the quantize package (callable) is imported on first use only
    if name == "quantize":
        import importlib

        return importlib.import_module(".quantize", __name__)
    raise AttributeError(f"module 'kdistill' has no attribute {name!r}")


__all__ = [
    "Distiller",
    "EnsembleTeacher",
    "KdistillError",
    "ModuleTeacher",
    "RunConfig",
    "TeacherOutput",
    "create",
    "create_model",
    "data",
    "kd_loss",
    "load_config",
    "losses",
    "methods",
    "metrics",
    "models",
    "soft_targets",
    "tasks",
    "train",
]
