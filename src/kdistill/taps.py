"""Feature taps: record any module's output (or input) by dotted path with forward hooks.

``"layer2.1.conv2"`` records that module's output; ``"fc:input"`` records the first
positional input of ``fc`` (the pre-logit embedding of most classifiers). Paths are resolved
with :meth:`torch.nn.Module.get_submodule`; a wrong path raises at once with the closest
valid names, never a silent ``None``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from .errors import ShapeError, did_you_mean


def split_tap(spec: str) -> tuple[str, str]:
    """``"a.b:input"`` -> ``("a.b", "input")``; the default kind is ``"output"``."""
    path, _, kind = spec.partition(":")
    kind = kind or "output"
    if kind not in ("output", "input"):
        raise ShapeError(f"Tap {spec!r}: the part after ':' must be 'input' or 'output', not {kind!r}.")
    return path, kind


_INDEX = re.compile(r"\[\s*(\d+)\s*\]")


def normalize_path(path: str) -> str:
    """``"stages[1].block"`` -> ``"stages.1.block"``: Python-style indexing of a
    ``Sequential``/``ModuleList`` is accepted beside PyTorch's dotted form."""
    return _INDEX.sub(r".\1", path.strip()).lstrip(".").replace("..", ".")


def tap_list(value: object) -> object:
    """A tap list given as one string (``"a.b"``, or ``"a.b, c.d"`` for several) as a list
    of specs; ``--set method.student_layers=a.b`` so names one path, not one per character.
    Anything else is returned as it is."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def resolve(model: nn.Module, path: str) -> nn.Module:
    """The submodule at ``path`` (``""`` is the model itself; ``a[1]`` is ``a.1``), or a
    clear error."""
    path = normalize_path(path)
    root = getattr(model, "tap_root", None)  # a wrapper whose taps name its inner network's modules
    if root and path != root and not path.startswith(root + "."):
        path = f"{root}.{path}" if path else root
    if path == "":
        return model
    try:
        return model.get_submodule(path)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise ShapeError(
            f"No module {path!r} in {type(model).__name__}.{did_you_mean(path, names)} "
            f"Run `kdistill list layers MODEL` to see every path."
        ) from None


class FeatureTaps:
    """Context manager that records features at the given taps during forward passes.

    Example:
        >>> with FeatureTaps(model, ["layer1", "fc:input"]) as taps:
        ...     logits = model(x)
        >>> taps["layer1"].shape
    """

    def __init__(self, model: nn.Module, specs: Iterable[str], detach: bool = False):
        self.model = model
        self.specs = list(dict.fromkeys(specs))
        self.detach = detach
        self.features: dict[str, Tensor] = {}
        self._handles: list = []
        # resolve now so a wrong path fails before any forward pass
        self._targets = [(s, resolve(model, split_tap(s)[0]), split_tap(s)[1]) for s in self.specs]

    def _hook(self, spec: str, kind: str):
        def hook(_module, inputs, output):
            value = inputs[0] if kind == "input" else output
            if isinstance(value, (tuple, list)):
                value = value[0]
            self.features[spec] = value.detach() if self.detach else value

        return hook

    def __enter__(self) -> FeatureTaps:
        self.features = {}
        for spec, module, kind in self._targets:
            self._handles.append(module.register_forward_hook(self._hook(spec, kind)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __getitem__(self, spec: str) -> Tensor:
        if spec not in self.features:
            raise ShapeError(f"Tap {spec!r} recorded nothing: the module did not run in forward().")
        return self.features[spec]


def layer_shapes(model: nn.Module, example: Tensor) -> list[tuple[str, str, tuple[int, ...] | None]]:
    """Every module path with its type and output shape for one forward of ``example``."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_m, _i, out, name=name):
            if isinstance(out, (tuple, list)):
                out = out[0]
            if isinstance(out, Tensor):
                shapes[name] = tuple(out.shape)

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in handles:
            h.remove()
    return [(n, type(m).__name__, shapes.get(n)) for n, m in model.named_modules() if n]


def probe(model: nn.Module, specs: Sequence[str], example: Tensor) -> dict[str, tuple[int, ...]]:
    """Shapes (batch dimension included) of the given taps for one forward of ``example``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FeatureTaps(model, specs) as taps:
            model(example)
        return {s: tuple(taps[s].shape) for s in specs}
    finally:
        model.train(was_training)
