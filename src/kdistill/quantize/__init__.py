"""Ship the student int8: post-training quantization (PTQ), quantization-aware training
(QAT) and quantization-aware distillation from the float teacher (QAD), through torchao's
PT2E flow, with int8 ONNX export and a float-vs-int8 profile.

``kdistill.quantize`` is both this package and a function: ``kd.quantize(run_dir_or_model,
data, method=...)`` (the module is callable, see :func:`quantize`). torchao is imported
only when a model is quantized, so importing this package is cheap; without it a clear
message names the ``quantize`` extra.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

from torch import nn

from .backend import MIN_CALIB, QuantizeError, batchnorm_ops, float_layers, graph_bytes
from .core import METHODS, Quantized, quantize_model, rebuild_int8
from .profile import int8_table, profile_int8
from .run import MIN_INT8_AGREEMENT, export_int8, load_int8, quantize_run
from .train import qad_loss


def quantize(source: str | Path | nn.Module, data: Any = None, method: str = "ptq", **kwargs: Any):
    """Quantize a run's student or a model to int8.

    Args:
        source: a finished run folder (writes ``RUN/int8/<method>/`` and returns its
            ``quantize.json`` record, see :func:`quantize_run`), or a float ``nn.Module``.
        data: with a module, its training data: a dataset (or ``DataSplits``, whose
            ``train`` is used) for calibration and QAT/QAD. Ignored for a run folder.
        method: ``"ptq"``, ``"qat"`` or ``"qad"``.
        **kwargs: settings of :func:`quantize_run` / :func:`quantize_model` (``calib``,
            ``epochs``, ``lr``, ``alpha``, ``temperature``, ``teacher`` ...). For a module and
            QAD, ``teacher`` is a float ``nn.Module`` or a function from inputs to logits.

    Returns:
        The run's ``quantize.json`` record, or a :class:`Quantized` (call it like the model).
    """
    if isinstance(source, nn.Module):
        if data is None:
            raise QuantizeError("Quantizing a model needs its training data (for calibration): quantize(model, data).")
        train = getattr(data, "train", data)
        teacher = kwargs.pop("teacher", None)
        if isinstance(teacher, nn.Module):
            t_module = teacher.eval()
            kwargs["teacher"] = lambda x: t_module(x)
        elif teacher is not None:
            kwargs["teacher"] = teacher
        return quantize_model(source, train, method, **kwargs)
    return quantize_run(source, method, **kwargs)


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any):
        return quantize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = [
    "METHODS",
    "MIN_CALIB",
    "MIN_INT8_AGREEMENT",
    "QuantizeError",
    "Quantized",
    "batchnorm_ops",
    "export_int8",
    "float_layers",
    "graph_bytes",
    "int8_table",
    "load_int8",
    "profile_int8",
    "qad_loss",
    "quantize",
    "quantize_model",
    "quantize_run",
    "rebuild_int8",
]
