"""Layer choice and shape helpers shared by the feature-matching methods (FitNets, AT, NST,
FT, AB, FSP, RKD).

A method's config names its layers in ``student_layers`` / ``teacher_layers`` (tap specs, see
:mod:`kdistill.taps`). Left as None, the zoo's declared taps are used
(:func:`kdistill.models.default_taps`): stage-matching methods pair the *last* k stages of
each network (k = the shorter list), as the CRD benchmark pairs the residual groups of
teachers and students of different depth; embedding methods use the pre-logit vector.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, ShapeError
from ..taps import FeatureTaps, probe, resolve, split_tap
from ..teachers import Teacher


def teacher_network(teacher: Teacher | None) -> nn.Module | None:
    """The teacher's ``nn.Module`` (an ensemble's first member, whose features it gives)."""
    if teacher is None:
        return None
    if getattr(teacher, "module", None) is not None:
        return teacher.module
    members = getattr(teacher, "members", None)
    if members:
        return getattr(members[0], "module", None)
    return None


def require_example(method: str, example: Tensor | None) -> Tensor:
    if example is None:
        raise ConfigError(
            f"Method {method!r} sizes its layers by one probe forward pass; pass example=<a small "
            f"input batch> to kdistill.methods.create()."
        )
    return example


def declared(model: nn.Module | None, key: str, who: str, method: str):
    """The model's declared ``default_taps[key]``, or a ConfigError asking for explicit layers."""
    from ..models import default_taps

    if model is None:
        raise ConfigError(
            f"Method {method!r}: the {who} is not a module (a cached or external teacher), so it "
            f"declares no layers; set method.{who}_layers explicitly."
        )
    value = default_taps(model).get(key)
    if not value:
        raise ConfigError(
            f"Method {method!r}: {type(model).__name__} declares no default {key}; set "
            f"method.{who}_layers to tap specs (run `kdistill list layers MODEL` to see the paths)."
        )
    return value


def stage_pairs(
    method: str,
    student_layers: Sequence[str] | None,
    teacher_layers: Sequence[str] | None,
    student: nn.Module,
    teacher: Teacher | None,
    last: int | None = None,
) -> tuple[list[str], list[str]]:
    """Paired student and teacher stage taps.

    Explicit lists are used as written and must have equal length. Declared stages are
    paired from the deep end: ``last`` stages, or as many as the shorter list has; when only
    one side is named, the other side's deepest stages are paired with it.
    """
    s = list(student_layers) if student_layers else None
    t = list(teacher_layers) if teacher_layers else None
    if s is not None and t is not None:
        if len(s) != len(t):
            raise ConfigError(
                f"Method {method!r}: student_layers has {len(s)} entries and teacher_layers "
                f"{len(t)}; they are matched pairwise, so give both the same length."
            )
        return s, t
    given = s if s is not None else t  # one side named explicitly: it sets the count
    s = s if s is not None else list(declared(student, "stages", "student", method))
    t = t if t is not None else list(declared(teacher_network(teacher), "stages", "teacher", method))
    if given is not None:
        if min(len(s), len(t)) < len(given):
            raise ConfigError(
                f"Method {method!r}: {len(given)} layer(s) named on one side ({given}) but the other "
                f"network declares only {min(len(s), len(t))} stage(s); name both sides' layers."
            )
        k = len(given)
    else:
        k = min(len(s), len(t)) if last is None else min(last, len(s), len(t))
    return s[len(s) - k:], t[len(t) - k:]


def embedding_pairs(
    method: str,
    student_layers: Sequence[str] | None,
    teacher_layers: Sequence[str] | None,
    student: nn.Module,
    teacher: Teacher | None,
) -> tuple[list[str], list[str]]:
    """Student and teacher embedding taps (default: each model's pre-logit vector)."""
    s = list(student_layers) if student_layers else [declared(student, "embedding", "student", method)]
    t = list(teacher_layers) if teacher_layers else [
        declared(teacher_network(teacher), "embedding", "teacher", method)
    ]
    if len(s) != len(t):
        raise ConfigError(
            f"Method {method!r}: student_layers has {len(s)} entries and teacher_layers {len(t)}; "
            f"give both the same length."
        )
    return s, t


def pre_activation(model: nn.Module | None, spec: str) -> str:
    """``"act1"`` -> ``"act1:input"`` when ``act1`` is an ``nn.ReLU`` (its input is the
    pre-activation response); any other tap is returned unchanged.

    An in-place ReLU overwrites its input before a forward hook can read it, so its tap is
    left at the output (same sign pattern, zeros where the response was negative).
    """
    if model is None:
        return spec
    path, kind = split_tap(spec)
    module = resolve(model, path)
    if kind == "output" and isinstance(module, nn.ReLU) and not module.inplace:
        return f"{path}:input"
    return spec


def on_device_of(model: nn.Module, x: Tensor) -> Tensor:
    """``x`` moved to the device of ``model``'s first parameter (a trained teacher may already
    sit on the GPU while the example batch is still on the CPU)."""
    p = next(model.parameters(), None)
    return x if p is None else x.to(p.device)


def probe_shapes(
    student: nn.Module,
    teacher: Teacher | None,
    s_specs: Sequence[str],
    t_specs: Sequence[str],
    example: Tensor,
) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Shapes of the student's and teacher's taps for one forward of ``example``."""
    s_shapes = probe(student, s_specs, on_device_of(student, example)) if s_specs else {}
    t_shapes: dict[str, tuple[int, ...]] = {}
    if t_specs:
        net = teacher_network(teacher)
        if net is not None:
            t_shapes = probe(net, t_specs, on_device_of(net, example))
        else:
            feats = teacher({"x": example}, list(t_specs)).features
            t_shapes = {s: tuple(feats[s].shape) for s in t_specs}
    return s_shapes, t_shapes


def require_maps(method: str, s_name: str, s_shape, t_name: str, t_shape) -> None:
    """Raise unless both features are maps (N, C, *spatial) with the same number of spatial dims."""
    if len(s_shape) < 3 or len(t_shape) < 3 or len(s_shape) != len(t_shape):
        raise ShapeError(
            f"Method {method!r} needs feature maps (N, C, *spatial) with the same number of "
            f"spatial dimensions on both sides, but student layer {s_name!r} gives "
            f"{tuple(s_shape)} and teacher layer {t_name!r} gives {tuple(t_shape)}. Pick "
            f"convolutional layers (see `kdistill list layers MODEL`)."
        )


def pool_to(x: Tensor, size: Sequence[int]) -> Tensor:
    """Adaptive average pooling of a 1-, 2- or 3-D map to ``size`` (no-op if already there)."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    pools = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
    if len(size) not in pools:
        raise ShapeError(f"Cannot pool a feature map of shape {tuple(x.shape)}.")
    return pools[len(size)](x, size)


def match_spatial(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Pool the larger of two maps down to the smaller's spatial size (per dimension)."""
    if a.shape[2:] == b.shape[2:]:
        return a, b
    size = [min(x, y) for x, y in zip(a.shape[2:], b.shape[2:], strict=True)]
    return pool_to(a, size), pool_to(b, size)


def params_reaching(model: nn.Module, specs: Sequence[str], example: Tensor) -> list[nn.Parameter]:
    """The trainable parameters that the features at ``specs`` depend on.

    This is "the network up to the guided layer" of FitNets stage 1, found from the autograd
    graph of one probe pass instead of from module order, so it holds for any model
    (branches, skip connections) without naming layers.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return []
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), FeatureTaps(model, specs) as taps:
            model(on_device_of(model, example))
            total = sum(taps[s].float().sum() for s in specs)
            if not isinstance(total, Tensor) or not total.requires_grad:
                return []
            grads = torch.autograd.grad(total, params, allow_unused=True)
    finally:
        model.train(was_training)
    return [p for p, g in zip(params, grads, strict=True) if g is not None]
