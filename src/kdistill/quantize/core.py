"""Quantize one model: post-training (PTQ), quantization-aware training with
cross-entropy (QAT), or quantization-aware distillation from a float model (QAD)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..data import Dataset
from .backend import (
    MIN_CALIB,
    QuantizeError,
    batchnorm_ops,
    calibrate_batches,
    convert,
    float_layers,
    graph_bytes,
    prepare,
)
from .isa import cpu_flags, full_range_exact
from .train import calibrate, finetune

#: calibration samples when none are asked for: all training samples up to this many
DEFAULT_CALIB = 512


def default_calib(n_train: int) -> int:
    """``--calib`` when not given: the whole training set up to :data:`DEFAULT_CALIB`
    samples (the floor :data:`~kdistill.quantize.backend.MIN_CALIB` still applies)."""
    return min(DEFAULT_CALIB, int(n_train))


def default_reduce_range() -> bool:
    """7-bit activations unless this CPU's int8 kernels are exact with 8 bits (VNNI/AMX,
    :mod:`~kdistill.quantize.isa`)."""
    return not full_range_exact(cpu_flags())

METHODS = ("ptq", "qat", "qad")


@dataclass
class Quantized:
    """The result of :func:`quantize_model`.

    Attributes:
        method: ``"ptq"``, ``"qat"`` or ``"qad"``.
        int8: the converted graph (int8 weights, quantize/dequantize around each
            quantized operator); call it like the float model.
        prepared: the calibrated / trained graph with its observers, whose state dict
            is what a run folder saves (conversion is deterministic from it).
        info: settings and facts (float layers, BatchNorm left, bytes by dtype, history).
    """

    method: str
    int8: torch.fx.GraphModule
    prepared: torch.fx.GraphModule
    info: dict[str, Any] = field(default_factory=dict)

    def __call__(self, x: Tensor) -> Tensor:
        return self.int8(x)


def check_settings(method: str, calib: int, n_train: int, epochs: int, alpha: float) -> None:
    """One clear message for each bad setting."""
    if method not in METHODS:
        raise QuantizeError(f"Unknown quantization method {method!r}; choose one of {', '.join(METHODS)}.")
    if n_train < MIN_CALIB:
        raise QuantizeError(f"The training data has only {n_train} samples; int8 calibration needs at least "
                            f"{MIN_CALIB} to set its ranges.")
    if calib < MIN_CALIB:
        raise QuantizeError(f"{calib} calibration samples are too few to set int8 ranges; use at least {MIN_CALIB} "
                            "(a few hundred is typical).")
    if calib > n_train:
        raise QuantizeError(f"{calib} calibration samples asked for, but the training data has only {n_train}; "
                            f"lower --calib to at most {n_train}.")
    if method != "ptq" and epochs < 1:
        raise QuantizeError(f"{method} trains the fake-quantized model; give --epochs of at least 1.")
    if not 0 <= alpha <= 1:
        raise QuantizeError(f"alpha (the distillation weight) must lie in [0, 1], got {alpha}.")


def quantize_model(model: nn.Module, train: Dataset, method: str = "ptq", *,
                   teacher: Callable[[Tensor], Tensor] | None = None, calib: int | None = None, epochs: int = 2,
                   lr: float = 1e-3, batch_size: int = 64, alpha: float = 0.9, temperature: float = 4.0,
                   keep_float: Sequence[str] = (), allow_float: bool = False, seed: int = 0,
                   reduce_range: bool | None = None, log: Callable[[str], None] = print) -> Quantized:
    """Quantize ``model`` to int8 with training data ``train``.

    Args:
        model: the float network (left unchanged; it is copied by the capture).
        train: training data: calibration samples come from it (``calib`` of them, drawn
            with ``seed``, as the run stored them: no augmentation; default
            :func:`default_calib`), and QAT/QAD train on it.
        method: ``"ptq"`` (calibrate only), ``"qat"`` (calibrate, then train with
            cross-entropy) or ``"qad"`` (calibrate, then train against ``teacher``).
        teacher: for QAD, a function from inputs to float logits (a frozen teacher, or
            the float model itself).
        alpha, temperature: QAD's loss ``alpha*KD_T + (1-alpha)*CE`` (QAT uses ``alpha=0``).
        keep_float: dotted module names to leave in float.
        reduce_range: 7-bit activations, safe for int8 kernels on x86 CPUs without VNNI
            (see :func:`~kdistill.quantize.backend.make_quantizer`); ``False`` for 8 bits;
            ``None`` (default): 8 bits where this CPU has VNNI/AMX (:func:`default_reduce_range`).
        allow_float: accept weighted layers the quantizer cannot quantize (they run in
            float); without it they raise :class:`QuantizeError` naming them.
    """
    calib = default_calib(len(train)) if calib is None else int(calib)
    reduce_range = default_reduce_range() if reduce_range is None else bool(reduce_range)
    check_settings(method, calib, len(train), epochs, alpha)
    if method == "qad" and teacher is None:
        raise QuantizeError("qad distils from a float model; give a teacher (or use method='qat').")
    batches = calibrate_batches(train, calib, batch_size, seed)
    qat = method != "ptq"
    prepared = prepare(model, batches[0] if batches[0].shape[0] >= 2 else train.example(2), qat, keep_float, reduce_range)
    left = float_layers(prepared)
    named = [f"{op} in {layer!r}" for op, layer in left if layer not in keep_float]
    if named and not allow_float:
        raise QuantizeError(
            f"The x86 int8 quantizer cannot quantize {', '.join(named[:5])}{' ...' if len(named) > 5 else ''}. "
            "Pass --allow-float (allow_float=True) to run those layers in float and quantize the rest, or "
            "--keep-float LAYER to choose them yourself."
        )
    calibrate(prepared, batches)
    history: list[dict[str, float]] = []
    if qat:
        a = alpha if method == "qad" else 0.0
        history = finetune(prepared, train, teacher if a > 0 else None, epochs=epochs, lr=lr, batch_size=batch_size,
                           alpha=a, temperature=temperature, seed=seed, log=log)
    int8 = convert(prepared)
    info = {
        "method": method, "calib": calib, "seed": seed, "keep_float": list(keep_float), "reduce_range": reduce_range,
        "float_layers": [list(p) for p in float_layers(int8)], "batchnorm_left": batchnorm_ops(int8),
        "bytes_by_dtype": graph_bytes(int8), "history": history,
    }
    if qat:
        info.update({"epochs": epochs, "lr": lr, "batch_size": batch_size,
                     "alpha": alpha if method == "qad" else 0.0, "temperature": temperature})
    return Quantized(method, int8, prepared, info)


def rebuild_int8(model: nn.Module, input_shape: Sequence[int], state: dict[str, Tensor], qat: bool,
                 keep_float: Sequence[str] = (), reduce_range: bool = True) -> tuple[torch.fx.GraphModule, torch.fx.GraphModule]:
    """``(prepared, int8)`` of a saved quantization: the float architecture captured and
    prepared the same way, the saved observer/fake-quant state loaded, converted again."""
    example = torch.zeros((2, *input_shape))
    prepared = prepare(model, example, qat, keep_float, reduce_range)
    missing, unexpected = prepared.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise QuantizeError(
            f"The saved int8 state does not fit the student's quantized graph (missing {len(missing)}, unexpected "
            f"{len(unexpected)} tensors, e.g. {(list(missing) + list(unexpected))[:3]}); quantize the run again."
        )
    return prepared, convert(prepared)
