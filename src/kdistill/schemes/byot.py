"""Be your own teacher: self-distillation from the deepest exit into shallow exits.

Zhang, Song, Gao, Chen, Bao & Ma (2019), "Be Your Own Teacher: Improve the Performance of
Convolutional Neural Networks via Self Distillation", arXiv:1905.08094 (ICCV 2019). An
auxiliary classifier (bottleneck, pooling, linear) sits on each shallow stage; the deepest
classifier (the network's own head) teaches them. Each shallow exit ``i`` is trained with
``(1 - alpha) * CE(q_i, y) + alpha * T^2 KL(q_C^T || q_i^T) + lambda * ||F_i - F_C||^2`` and the
deepest with ``CE(q_C, y)``; ``F_i`` is exit ``i``'s bottleneck output (a 1x1 convolution
to the deepest stage's channels, average-pooled to its size) and ``F_C`` the deepest stage's
features. The deepest exit's outputs are the teacher: no gradient flows into them from the
distillation terms. Defaults ``T = 3``, ``alpha = 0.1``, ``lambda = 1e-6`` are
common choices that were not checked against the paper's tables here; set them from the
paper for an exact replication.

Exits are built from the model's ``default_taps["stages"]`` (every stage but the last gets
an exit), so any zoo model works; ``scheme.stages`` names other tap points.

Export: ``exit<i>/model.safetensors`` holds the base network plus exit ``i``'s head;
:func:`load_exit` rebuilds it as an :class:`ExitModel` that stops the forward pass at the
tap (only the layers up to exit ``i`` run). The deepest exit's folder holds the plain
network (loadable as ``create_model(name)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ..data import DataSplits
from ..engine.checkpoint import load_into, load_weights
from ..errors import ConfigError
from ..losses import hard_label_ce, kl_to_targets
from ..methods import Context, Distiller, Method
from ..models import default_taps
from ..runs import build_model, model_record, save_model, write_json
from ..runs.saved import model_from_record, read_model_record
from ..taps import FeatureTaps, resolve, split_tap
from ._common import ModelSpec, SchemeContext, as_model
from ._registry import Scheme, SchemeConfig, register_scheme


class AuxHead(nn.Module):
    """Bottleneck (to the deepest stage's channels) + pooling + linear classifier.

    Args:
        in_shape: the tapped stage's feature shape without batch (``(D,)``, ``(C, L)`` or
            ``(C, H, W)``).
        deep_shape: the deepest stage's feature shape (same rank).
        num_classes: logit width.
    """

    def __init__(self, in_shape: tuple[int, ...], deep_shape: tuple[int, ...], num_classes: int):
        super().__init__()
        if len(in_shape) != len(deep_shape) or len(in_shape) not in (1, 2, 3):
            raise ConfigError(
                f"BYOT: an exit's features {in_shape} and the deepest stage's {deep_shape} must both be "
                "vectors, 1-D or 2-D maps."
            )
        c_in, c_out = in_shape[0], deep_shape[0]
        if len(in_shape) == 1:
            self.bottleneck = nn.Sequential(nn.Linear(c_in, c_out), nn.ReLU())
            self.resize = nn.Identity()
        else:
            conv, bn, pool = (
                (nn.Conv1d, nn.BatchNorm1d, nn.AdaptiveAvgPool1d)
                if len(in_shape) == 2
                else (nn.Conv2d, nn.BatchNorm2d, nn.AdaptiveAvgPool2d)
            )
            self.bottleneck = nn.Sequential(conv(c_in, c_out, 1, bias=False), bn(c_out), nn.ReLU())
            self.resize = pool(tuple(deep_shape[1:]))
        self.fc = nn.Linear(c_out, num_classes)

    def forward(self, f: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits, hint features)``."""
        h = self.resize(self.bottleneck(f))
        pooled = h.flatten(2).mean(-1) if h.dim() > 2 else h
        return self.fc(pooled), h


def _feature_shapes(base: nn.Module, taps: list[str], example: Tensor) -> dict[str, tuple[int, ...]]:
    base.eval()
    with torch.no_grad(), FeatureTaps(base, taps) as t:
        base(example)
    return {k: tuple(v.shape[1:]) for k, v in t.features.items()}


class SelfDistillNet(nn.Module):
    """A base network with auxiliary exits; ``forward`` returns the deepest exit's logits
    and keeps every exit's logits and hint features in ``last``.

    Args:
        base: the network (its own head is the deepest exit).
        taps: shallow tap specs, one exit each, shallow to deep.
        deep: the deepest stage's tap spec (the hint target).
        num_classes: logit width.
        example: a small input batch (sizes the heads).
    """

    def __init__(self, base: nn.Module, taps: list[str], deep: str, num_classes: int, example: Tensor):
        super().__init__()
        self.base, self.taps, self.deep = base, list(taps), deep
        shapes = _feature_shapes(base, [*taps, deep], example)
        self.heads = nn.ModuleList([AuxHead(shapes[t], shapes[deep], num_classes) for t in taps])
        self.last: dict = {}

    def forward(self, x: Tensor) -> Tensor:
        with FeatureTaps(self.base, [*self.taps, self.deep]) as t:
            logits = self.base(x)
        outs = [h(t.features[tap]) for h, tap in zip(self.heads, self.taps, strict=True)]
        self.last = {
            "exit_logits": [o[0] for o in outs] + [logits],
            "hints": [o[1] for o in outs],
            "deep_features": t.features[self.deep],
        }
        return logits


def byot_losses(
    exit_logits: list[Tensor],
    hints: list[Tensor],
    deep_features: Tensor,
    labels: Tensor,
    alpha: float = 0.1,
    lam: float = 1e-6,
    temperature: float = 3.0,
) -> dict[str, Tensor]:
    """BYOT's loss parts (see module docstring); ``exit_logits[-1]`` is the deepest exit.

    Returns ``ce`` (all exits), ``kd`` (shallow exits to the deepest), ``hint``, and
    ``kd_per_exit`` (one value per exit, the deepest's being zero: it is the teacher).
    """
    deep = exit_logits[-1]
    target = F.log_softmax(deep.detach().float() / temperature, -1)
    kd_each = [kl_to_targets(z, target, temperature) for z in exit_logits]
    ce = hard_label_ce(deep, labels) + (1 - alpha) * sum(hard_label_ce(z, labels) for z in exit_logits[:-1])
    feat = deep_features.detach().float()
    hint = sum(((h.float() - feat) ** 2).flatten(1).sum(1).mean() for h in hints)
    return {
        "ce": ce,
        "kd": alpha * sum(kd_each[:-1]),
        "hint": lam * hint,
        "kd_per_exit": torch.stack([k.detach() for k in kd_each]),
    }


class ByotLoss(Method):
    """BYOT's loss on a :class:`SelfDistillNet` student (not a registered method)."""

    name = "byot"
    needs_teacher = False

    def __init__(self, net: SelfDistillNet, alpha: float, lam: float, temperature: float):
        super().__init__(None, net, None, None)
        self._net = [net]  # a reference: the network is the distiller's student
        self.alpha, self.lam, self.temperature = alpha, lam, temperature

    def forward(self, ctx: Context) -> dict[str, Tensor]:
        last = self._net[0].last
        out = byot_losses(
            last["exit_logits"],
            last["hints"],
            last["deep_features"],
            ctx.labels,
            self.alpha,
            self.lam,
            self.temperature,
        )
        out.pop("kd_per_exit")
        return out


class _Stop(Exception):
    def __init__(self, features: Tensor):
        self.features = features


class ExitModel(nn.Module):
    """One exit deployed alone: the base network runs up to ``tap``, then ``head``."""

    def __init__(self, base: nn.Module, tap: str, head: AuxHead):
        super().__init__()
        self.base, self.tap, self.head = base, tap, head
        path, kind = split_tap(tap)
        if kind != "output":
            raise ConfigError(f"BYOT exits tap module outputs; {tap!r} is an input tap.")
        self._target = [resolve(base, path)]  # a list: not a second registration of the module

    def forward(self, x: Tensor) -> Tensor:
        def stop(_m, _i, out):
            raise _Stop(out)

        h = self._target[0].register_forward_hook(stop)
        try:
            self.base(x)
        except _Stop as s:
            return self.head(s.features)[0]
        finally:
            h.remove()
        raise ConfigError(f"Exit tap {self.tap!r} never ran in the forward pass.")


def load_exit(folder: str | Path, trust: bool = False, trust_code: bool = False) -> nn.Module:
    """Rebuild an exported exit from its folder (``model.json`` + ``model.safetensors``);
    ``trust_code`` allows a ``model.json`` naming an importable model factory."""
    folder = Path(folder)
    meta = read_model_record(folder, "BYOT exit")
    shape, k = tuple(meta["input_shape"]), meta["num_classes"]
    base = model_from_record(meta, trust_code, folder / "model.json")
    if meta.get("exit_tap") is None:
        model = base
    else:
        shapes = _feature_shapes(base, [meta["exit_tap"], meta["deep_tap"]], torch.zeros(2, *shape))
        model = ExitModel(
            base, meta["exit_tap"], AuxHead(shapes[meta["exit_tap"]], shapes[meta["deep_tap"]], k)
        )
    load_into(model, load_weights(folder / "model.safetensors", trust=trust), f"BYOT exit in {folder}")
    return model.eval()


@register_scheme("byot")
class BYOT(Scheme):
    class Config(SchemeConfig):
        """Settings.

        Attributes:
            model: the architecture (default: the run's student).
            stages: tap specs of the shallow exits (default: every ``default_taps`` stage
                but the last).
            deep: tap spec of the deepest stage (default: the last ``default_taps`` stage).
            alpha: weight of the KD term (CE gets ``1 - alpha``) on shallow exits.
            lam: weight of the feature (hint) L2 term.
            temperature: KD temperature.
        """

        model: ModelSpec | None = None
        stages: list[str] | None = None
        deep: str | None = None
        alpha: Annotated[float, Field(ge=0, le=1)] = 0.1
        lam: Annotated[float, Field(ge=0, le=1e6)] = 1e-6
        temperature: Annotated[float, Field(gt=0, le=100)] = 3.0

    def run(self, ctx: SchemeContext, s: Config) -> dict:
        spec = as_model(s.model) if s.model is not None else ctx.cfg.student
        torch.manual_seed(ctx.cfg.train.seed)
        base = build_model(spec.model, spec.kwargs, ctx.data, spec.checkpoint, ctx.trust, "BYOT network")
        stages = default_taps(base).get("stages") or []
        deep = s.deep or (stages[-1] if stages else None)
        taps = s.stages if s.stages is not None else stages[:-1]
        if deep is None or not taps:
            raise ConfigError(
                f"BYOT needs shallow stages to put exits on: {spec.model} declares none; "
                "set scheme.stages (and scheme.deep) to tap specs."
            )
        net = SelfDistillNet(base, taps, deep, ctx.data.num_classes, ctx.data.train.example(2))
        fit = ctx.fit(Distiller(net, None, [(1.0, ByotLoss(net, s.alpha, s.lam, s.temperature))]), "network")
        net.cpu()  # exits share the base: evaluate and save them all on one device
        out_stages, exits = {}, []
        for i, tap in enumerate([*taps, None]):
            name = f"exit{i}"
            model = base if tap is None else ExitModel(base, tap, net.heads[i])
            res = self._save_exit(ctx, name, model, spec, tap, deep, ctx.data)
            exits.append(res)
            out_stages[name] = {
                "dir": name,
                "tap": tap or "(deepest: the network's head)",
                "test_acc": res["final"]["test"]["acc"],
            }
        save_model(ctx.run_dir, base.cpu(), exits[-1]["student"])
        return {
            "stages": out_stages,
            "deployed": f"exit{len(taps)} (deepest)",
            "student": exits[-1]["student"],
            "final": exits[-1]["final"],
            "network": {k: fit[k] for k in ("final", "best", "epochs", "steps", "train_time_s")},
        }

    @staticmethod
    def _save_exit(
        ctx: SchemeContext, name: str, model: nn.Module, spec, tap, deep, data: DataSplits
    ) -> dict:
        sub = ctx.run_dir / name
        sub.mkdir(parents=True, exist_ok=True)
        record = model_record(model, spec.model, spec.kwargs, data) | {"exit_tap": tap, "deep_tap": deep}
        metrics = ctx.evaluate(model)
        save_model(sub, model.cpu(), record)
        res = {"name": name, "student": record, "final": metrics}
        write_json(sub / "results.json", res)
        return res | {"run_dir": str(sub)}
