"""The quantization backend: torchao's PyTorch 2 export quantization (PT2E) flow with its
x86 quantizer, wrapped so every failure is one clear message.

The flow (torchao 0.18, ``torchao.quantization.pt2e``; the PyTorch tutorials "PyTorch 2
Export Post Training Quantization" and "... Quantization-Aware Training" describe it):

1. ``torch.export.export`` captures the float model as an ATen graph (batch axis dynamic);
2. ``prepare_pt2e`` (post-training) or ``prepare_qat_pt2e`` (quantization-aware) lets the
   quantizer annotate the graph and inserts observers or fake-quantizers; PTQ folds each
   eval-mode BatchNorm into the convolution before it here, QAT keeps BatchNorm as a
   simulated fold until conversion;
3. calibration batches (PTQ) or training steps (QAT) set the ranges;
4. ``convert_pt2e`` replaces observers by quantize/dequantize pairs with int8 weights
   folded in (the "QDQ" form ONNX uses as well).

The quantizer is :class:`X86InductorQuantizer` with its default static config, read from
``get_default_x86_inductor_quantization_config``: activations uint8 per-tensor affine
(histogram observer for PTQ, moving-average fake-quant for QAT), weights int8 per-channel
symmetric, for ``conv1d``, ``conv2d`` (depthwise included), ``linear`` and ``matmul``, with
pooling and concatenation kept in int8 between them. Other weighted operators
(``conv3d``, transposed convolutions, ``bmm``) stay float: :func:`float_layers` names them.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError, KdistillError

INSTALL_HINT = 'pip install -e ".[quantize]"'
#: fewer calibration samples than this cannot give a histogram worth trusting
MIN_CALIB = 32


class QuantizeError(KdistillError):
    """A model, run folder or setting that int8 quantization cannot handle."""


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence torchao's import chatter (CUDA kernels it cannot load on CPU) and the
    exporters' warnings; errors still raise."""
    names = ("torchao", "torch.utils._pytree", "torch.onnx", "torch.export", "torch._export",
             "torch.onnx._internal.exporter._registration")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def torchao_pt2e() -> dict[str, Any]:
    """The torchao names this package uses, or a :class:`ConfigError` naming the extra."""
    try:
        with quiet():
            import torchao
            from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e
            from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError as e:
        raise ConfigError(f"int8 quantization needs torchao (the PT2E flow), which is not installed or does not "
                          f"import ({e}): {INSTALL_HINT}.") from None
    return {"version": torchao.__version__, "prepare": prepare_pt2e, "prepare_qat": prepare_qat_pt2e,
            "convert": convert_pt2e, "to_eval": move_exported_model_to_eval,
            "to_train": move_exported_model_to_train, "xiq": xiq}


def make_quantizer(qat: bool, keep_float: Sequence[str] = (), reduce_range: bool = True):
    """The x86 quantizer with its default static int8 config; the modules named in
    ``keep_float`` (dotted paths, e.g. ``classifier``) are left in float.

    ``reduce_range`` limits activations to 7 bits (0..127). x86 CPUs without VNNI (AVX2,
    plain AVX-512) multiply uint8 by int8 with ``vpmaddubsw``, whose int16 sums saturate
    with full-range activations: ONNX Runtime's and oneDNN's int8 kernels then drift from
    the quantized model (torchao's and ONNX Runtime's docs both give this advice).
    """
    xiq = torchao_pt2e()["xiq"]
    config = xiq.get_default_x86_inductor_quantization_config(is_qat=qat, reduce_range=reduce_range)
    q = xiq.X86InductorQuantizer().set_global(config)
    for name in keep_float:
        q.set_module_name_qconfig(name, None)
    return q


def capture(model: nn.Module, example: Tensor) -> torch.fx.GraphModule:
    """``model`` as a ``torch.export`` graph with a dynamic batch axis, or a
    :class:`QuantizeError` saying why it cannot be captured."""
    if example.shape[0] < 2:
        raise ValueError("capture needs an example batch of at least 2 samples")
    import copy

    # a copy: the captured graph shares the module's parameters, and QAT trains them
    model = copy.deepcopy(model).cpu().float().eval()
    try:
        with quiet():
            ep = torch.export.export(model, (example[:2].float().cpu(),),
                                     dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as e:  # torch.export raises many types (Unsupported, UserError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QuantizeError(
            f"The model {type(model).__name__} cannot be captured by torch.export, which int8 quantization "
            f"(PT2E) needs: {first[:300]}. Data-dependent Python control flow and untraceable calls are the "
            "usual causes; ship it as float (`kdistill export RUN`) instead."
        ) from None
    return ep.module()


def prepare(model: nn.Module, example: Tensor, qat: bool, keep_float: Sequence[str] = (),
            reduce_range: bool = True) -> torch.fx.GraphModule:
    """The captured model with observers (``qat=False``) or fake-quantizers (``qat=True``)."""
    ao = torchao_pt2e()
    quantizer = make_quantizer(qat, keep_float, reduce_range)
    gm = capture(model, example)
    with quiet():
        try:
            prepared = (ao["prepare_qat"] if qat else ao["prepare"])(gm, quantizer)
        except KdistillError:
            raise
        except Exception as e:  # an annotation the quantizer rejects
            raise QuantizeError(f"The x86 quantizer could not prepare {type(model).__name__}: "
                                f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}.") from None
    ao["to_eval"](prepared)
    return prepared


def set_mode(prepared: torch.fx.GraphModule, train: bool) -> None:
    """Train or eval mode of a prepared graph (BatchNorm and dropout; ``.train()`` is
    refused on exported graphs)."""
    ao = torchao_pt2e()
    (ao["to_train"] if train else ao["to_eval"])(prepared)


def convert(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The int8 (QDQ) graph of a calibrated or trained prepared graph. ``prepared`` itself
    is left as it was (its state is copied first), so it can still be saved."""
    ao = torchao_pt2e()
    import copy

    with quiet():
        work = copy.deepcopy(prepared)
        ao["to_eval"](work)
        return ao["convert"](work)


# -- what the graph holds ---------------------------------------------------------------------
_WEIGHTED = ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
             "convolution", "linear", "matmul", "bmm", "mm", "addmm", "baddbmm", "einsum")


def _op_name(node) -> str:
    target = node.target
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0]


def layer_name(node) -> str:
    """The dotted module path a graph node came from (``?`` when unknown)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "?"
    path = list(stack.values())[-1][0]
    return str(path).replace("L['self'].", "").replace("L__self__.", "") or "?"


def _is_quantized(node) -> bool:
    """Whether ``node`` is an observer / fake-quantizer (prepared graph) or a dequantize
    (converted graph): what feeds a quantized operator."""
    if node.op == "call_module" and "activation_post_process" in str(node.target):
        return True
    return node.op == "call_function" and "dequantize" in str(node.target)


def float_layers(graph: torch.fx.GraphModule) -> list[tuple[str, str]]:
    """``(operator, layer)`` of every weighted operator (convolution, linear, matmul) whose
    weight (second operand) is not quantized in a prepared or converted graph: what runs in
    float."""
    out = []
    for node in graph.graph.nodes:
        if node.op != "call_function" or _op_name(node) not in _WEIGHTED or len(node.args) < 2:
            continue
        weight = node.args[1]
        if not (isinstance(weight, torch.fx.Node) and _is_quantized(weight)):
            out.append((_op_name(node), layer_name(node)))
    return out


def batchnorm_ops(graph: torch.fx.GraphModule) -> int:
    """BatchNorm operators left in a graph (0 once they are folded into convolutions)."""
    return sum(1 for n in graph.graph.nodes if n.op == "call_function" and "batch_norm" in str(n.target))


def graph_bytes(graph: torch.fx.GraphModule) -> dict[str, int]:
    """Bytes of the constants a graph uses, by dtype (a converted graph: int8 weights, float
    scales and biases, int64 zero points). Tensors left on the module but no longer read by
    the graph (the float weights conversion replaced) are not counted."""
    out: dict[str, int] = {}
    seen = set()
    for node in graph.graph.nodes:
        if node.op != "get_attr" or node.target in seen:
            continue
        seen.add(node.target)
        t = graph
        for part in str(node.target).split("."):
            t = getattr(t, part, None)
        if isinstance(t, Tensor):
            key = str(t.dtype).replace("torch.", "")
            out[key] = out.get(key, 0) + t.numel() * t.element_size()
    return out


def calibrate_batches(train, calib: int, batch_size: int, seed: int) -> list[Tensor]:
    """``calib`` training inputs drawn without replacement with ``seed``, in batches."""
    g = torch.Generator().manual_seed(int(seed))
    index = torch.randperm(len(train), generator=g)[:calib]
    return [train.take(index[i : i + batch_size])["x"].float() for i in range(0, calib, batch_size)]
