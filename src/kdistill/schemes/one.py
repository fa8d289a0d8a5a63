"""ONE: on-the-fly native ensemble (Lan, Zhu & Gong 2018, arXiv:1806.04606, NeurIPS 2018).

One network with shared low layers and ``m`` branches (copies of the high layers); a gate
(linear + softmax on the pooled shared features) weights the branches' logits into an
ensemble teacher formed on the fly. The loss is
``sum_i CE(z_i) + CE(z_e) + T^2 * sum_i KL(softmax(z_e/T) || softmax(z_i/T))`` with
``T = 3`` (the paper's), the teacher's targets held fixed in the KL terms. A single branch
is deployed alone.

Building the branches generically (:class:`MultiBranch`): ``m`` full copies of a model are
made; every leaf module that runs up to the ``split`` module (default: the model's second
to last ``default_taps`` stage, so the last stage and the head are replicated, as ONE
branches the last ResNet stage) is one object shared by all copies. Each branch is
therefore a complete instance of the plain architecture: its own ``state_dict`` (shared
layers included) loads into ``create_model(name)``. In the forward pass the shared
features are computed by branch 0 and replayed into the others at the split point (the
other branches' duplicate low-layer work is discarded; with BatchNorm in the shared part its
running statistics see each batch ``m`` times).

Supported: models whose forward calls each leaf module once, in order, with the split a
module's output: every zoo model (``mlp``, ``cnn1d``, ``convnet*``, ``resnet*``, ``wrn*``,
``mobilenetv2``, ``shufflenetv2``; checked: a branch loaded into a fresh plain model gives the
logits it gives inside the multi-branch network).
Refused with a message: a shared module called twice, parameters held directly by container
modules, a split module that never runs. Not detected: an in-place operation applied directly to
the split output would overwrite the replayed features (autograd then stops with its own error).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses import hard_label_ce, kl_to_targets
from ..methods import Context, Distiller, Method
from ..models import default_taps
from ..runs import build_model, save_model
from ..taps import resolve, split_tap
from ._common import ModelSpec, SchemeContext, as_model, save_members
from ._registry import Scheme, SchemeConfig, register_scheme


def default_split(model: nn.Module) -> str:
    stages = default_taps(model).get("stages") or []
    if len(stages) < 2:
        raise ConfigError(
            "ONE needs a split point: the model declares fewer than two stages; set scheme.split to the "
            "module path after which the branches start."
        )
    return split_tap(stages[-2])[0]


def shared_leaves(model: nn.Module, split: str, example: Tensor) -> list[str]:
    """Leaf modules that run before ``split``'s output, in call order (a probe pass)."""
    target = resolve(model, split)
    names = {id(m): n for n, m in model.named_modules()}
    for n, m in model.named_modules():
        if n and list(m.children()) and list(m.parameters(recurse=False)):
            raise ConfigError(f"ONE cannot share {n!r}: it holds parameters outside a leaf module.")
    order: list[str] = []
    done = [False]
    handles = []

    def leaf_hook(mod, _i, _o):
        if not done[0]:
            order.append(names[id(mod)])

    def split_hook(_m, _i, _o):
        done[0] = True

    for m in model.modules():
        if not list(m.children()) and m is not model:
            handles.append(m.register_forward_hook(leaf_hook))
    handles.append(target.register_forward_hook(split_hook))
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    if not done[0]:
        raise ConfigError(
            f"The split module {split!r} never ran in a forward pass; pick a module on the main path."
        )
    if len(set(order)) != len(order):
        raise ConfigError(f"A module before {split!r} runs twice in one forward pass; ONE cannot share it.")
    return order


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


class MultiBranch(nn.Module):
    """``m`` copies of a model sharing their layers up to ``split``, plus a gate.

    Args:
        factory: builds one fresh copy of the plain model.
        branches: number of branches ``m``.
        split: module path of the last shared module (its output feeds the branches).
        example: a small input batch (for the probe pass and the gate's width).
    """

    def __init__(self, factory: Callable[[], nn.Module], branches: int, split: str, example: Tensor):
        super().__init__()
        first = factory()
        self.shared_names = shared_leaves(first, split, example)
        copies = [first]
        for _ in range(branches - 1):
            b = factory()
            for name in self.shared_names:
                _set_submodule(b, name, first.get_submodule(name))
            copies.append(b)
        self.branches = nn.ModuleList(copies)
        self.split = split
        self._cache: list[Tensor | None] = [None]
        self._replay = [False]
        resolve(first, split).register_forward_hook(self._split_hook)
        with torch.no_grad():
            first.eval()
            first(example)
            width = self._pool(self._cache[0]).shape[1]
        self.gate = nn.Linear(width, branches)
        self.last: dict[str, Tensor] = {}

    def _split_hook(self, _m, _i, output):
        if self._replay[0]:
            return self._cache[0]
        self._cache[0] = output
        return None

    @staticmethod
    def _pool(f: Tensor) -> Tensor:
        return f.flatten(2).mean(-1) if f.dim() > 2 else f.flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        self._replay[0] = False
        logits = [self.branches[0](x)]
        shared = self._cache[0]
        self._replay[0] = True
        try:
            logits += [b(x) for b in self.branches[1:]]
        finally:
            self._replay[0] = False
            self._cache[0] = None
        z = torch.stack(logits)  # (m, N, C)
        g = F.softmax(self.gate(self._pool(shared)), dim=-1)  # (N, m)
        ens = torch.einsum("nm,mnc->nc", g, z)
        self.last = {"branch_logits": z, "gate": g}
        return ens


def one_losses(
    branch_logits: Tensor, ensemble_logits: Tensor, labels: Tensor, temperature: float = 3.0
) -> dict:
    """ONE's loss parts: branches' CE, the ensemble's CE, and the distillation to the branches."""
    ce = sum(hard_label_ce(z, labels) for z in branch_logits)
    target = F.log_softmax(ensemble_logits.detach().float() / temperature, -1)
    kd = sum(kl_to_targets(z, target, temperature) for z in branch_logits)
    return {"ce": ce, "ce_ensemble": hard_label_ce(ensemble_logits, labels), "kd": kd}


class OneLoss(Method):
    """ONE's loss on a :class:`MultiBranch` student (not a registered method)."""

    name = "one"
    needs_teacher = False

    def __init__(self, net: MultiBranch, temperature: float):
        super().__init__(None, net, None, None)
        self._net = [net]  # a reference: the network is the distiller's student
        self.temperature = temperature

    def forward(self, ctx: Context) -> dict[str, Tensor]:
        return one_losses(
            self._net[0].last["branch_logits"], ctx.student_logits, ctx.labels, self.temperature
        )


@register_scheme("one")
class ONE(Scheme):
    class Config(SchemeConfig):
        """Settings.

        Attributes:
            branches: number of branches (3 in most of the paper's experiments).
            model: the architecture (default: the run's student).
            split: module path of the last shared module (default: second-to-last stage).
            temperature: distillation temperature (3, the paper's).
            deploy: index of the branch saved as the run's model.
        """

        branches: Annotated[int, Field(ge=2, le=32)] = 3
        model: ModelSpec | None = None
        split: str | None = None
        temperature: Annotated[float, Field(gt=0, le=100)] = 3.0
        deploy: Annotated[int, Field(ge=0)] = 0

    def run(self, ctx: SchemeContext, s: Config) -> dict:
        spec = as_model(s.model) if s.model is not None else ctx.cfg.student
        if s.deploy >= s.branches:
            raise ConfigError(f"scheme.deploy is {s.deploy}, but there are only {s.branches} branches.")
        torch.manual_seed(ctx.cfg.train.seed)
        factory = lambda: build_model(
            spec.model, spec.kwargs, ctx.data, spec.checkpoint, ctx.trust, "ONE branch"
        )
        probe = factory()
        split = s.split or default_split(probe)
        net = MultiBranch(factory, s.branches, split, ctx.data.train.example(2))
        fit = ctx.fit(Distiller(net, None, [(1.0, OneLoss(net, s.temperature))]), "group")
        net.cpu()  # branches share layers: evaluate and save them all on one device
        stages = {
            "ensemble": {
                "dir": "group",
                "model": f"{s.branches} branches, gated",
                "test_acc": fit["final"].get("test", {}).get("acc"),
            }
        }
        saved = save_members(ctx, [(f"branch{i}", b, spec) for i, b in enumerate(net.branches)], stages,
                             {"split": split})
        dep = saved[s.deploy]
        save_model(ctx.run_dir, net.branches[s.deploy].cpu(), dep["student"])
        return {
            "stages": stages,
            "deployed": f"branch{s.deploy}",
            "split": split,
            "shared": net.shared_names,
            "student": dep["student"],
            "final": dep["final"],
            "group": {k: fit[k] for k in ("final", "best", "epochs", "steps", "train_time_s")},
        }
