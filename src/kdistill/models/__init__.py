"""The model zoo and :func:`create_model`."""

from . import cnn1d, convnet, imagenet, mlp, mobilenetv2, resnet, shufflenetv2, wrn  # noqa: F401  (register)
from ._registry import (
    MODELS,
    HFClassifier,
    TrustCode,
    check_name,
    create_model,
    default_taps,
    register_model,
    require_trusted,
    runs_code,
)
from .layers import layer_table

__all__ = [
    "MODELS",
    "HFClassifier",
    "TrustCode",
    "check_name",
    "create_model",
    "default_taps",
    "layer_table",
    "register_model",
    "require_trusted",
    "runs_code",
]
