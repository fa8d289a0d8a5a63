"""``quantized.safetensors``: the converted int8 graph's own constants, nothing more.

A converted graph reads int8 weights (``_frozen_paramN``), their per-channel scales and
zero points, float biases, and holds each activation's quantize/dequantize scale and zero
point as literal arguments of its per-tensor nodes. The file stores exactly those: every
tensor a ``get_attr`` node reads (zero points as int32), and ``__activation_qparams__``,
an ``(n, 2)`` float64 table of the per-tensor nodes' ``(scale, zero_point)`` in graph order.
That is the int8 weights (a quarter of the float bytes) plus scales and biases, where
saving the prepared graph's state (float weights and a 2048-bin histogram per activation
observer) made the "int8" file larger than the float one.

Loading (:func:`load_int8_state`) captures and converts the float student the same way
(an uncalibrated prepare, observers fed one zero batch so conversion has ranges), then
replaces those constants with the stored ones: the graph's structure is rebuilt from the
student's ``model.json``, never loaded from the file, and the constants alone decide its
outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backend import QuantizeError

QPARAMS_KEY = "__activation_qparams__"
FORMAT = "int8-graph-constants-v1"


def _per_tensor_nodes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and "per_tensor" in str(n.target)
            and ("quantize" in str(n.target)) and len(n.args) >= 3
            and not isinstance(n.args[1], torch.fx.Node)]


def _attr(gm: torch.nn.Module, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _set_attr(gm: torch.nn.Module, target: str, value: Tensor) -> None:
    *path, last = target.split(".")
    owner = gm
    for part in path:
        owner = getattr(owner, part)
    old = getattr(owner, last)
    if isinstance(old, torch.nn.Parameter):
        value = torch.nn.Parameter(value, requires_grad=False)
    if isinstance(owner, torch.nn.Module) and last in owner._buffers:
        owner._buffers[last] = value
    else:
        setattr(owner, last, value)


def int8_state(int8: torch.fx.GraphModule) -> dict[str, Tensor]:
    """The tensors :mod:`this module's docstring <kdistill.quantize.store>` describes."""
    out: dict[str, Tensor] = {}
    for node in int8.graph.nodes:
        if node.op == "get_attr" and node.target not in out:
            t = _attr(int8, str(node.target))
            if isinstance(t, Tensor):
                t = t.detach().cpu().contiguous()
                out[str(node.target)] = t.to(torch.int32) if t.dtype == torch.int64 else t
    table = [[float(n.args[1]), float(n.args[2])] for n in _per_tensor_nodes(int8)]
    out[QPARAMS_KEY] = torch.tensor(table, dtype=torch.float64).reshape(-1, 2)
    return out


def load_int8_state(int8: torch.fx.GraphModule, state: dict[str, Tensor]) -> torch.fx.GraphModule:
    """Put the stored constants into a freshly converted graph of the same student."""
    nodes = _per_tensor_nodes(int8)
    table = state.get(QPARAMS_KEY)
    attrs = {str(n.target) for n in int8.graph.nodes if n.op == "get_attr"}
    stored = set(state) - {QPARAMS_KEY}
    if table is None or table.shape[0] != len(nodes) or not attrs <= stored:
        raise QuantizeError(f"The saved int8 constants do not fit the student's int8 graph ({len(stored)} tensors and "
                            f"{0 if table is None else table.shape[0]} activation ranges saved; the graph reads "
                            f"{len(attrs)} and has {len(nodes)}); quantize the run again.")
    for target in attrs:
        old = _attr(int8, target)
        new = state[target].to(old.dtype)
        if new.shape != old.shape:
            raise QuantizeError(f"The saved int8 tensor {target} has shape {tuple(new.shape)}, the graph "
                                f"{tuple(old.shape)}; quantize the run again.")
        _set_attr(int8, target, new)
    for node, (scale, zp) in zip(nodes, table.tolist()):
        node.args = (node.args[0], float(scale), int(round(zp)), *node.args[3:])
    int8.recompile()
    return int8
