"""Deep mutual learning: peers trained together from scratch, each learning from the others.

Zhang, Xiang, Hospedales & Lu (2018), "Deep Mutual Learning", arXiv:1706.00384 (CVPR 2018).
Peer ``k`` minimises ``CE(p_k, y) + 1/(K-1) * sum_{l != k} KL(p_l || p_k)`` (their K-network
form, ``peer_target: each``); ``peer_target: mean`` uses their ensemble variant, ``KL(mean_{l!=k}
p_l || p_k)``. Temperature 1 as in the paper. The other peers' predictions are targets
(no gradient flows into them through peer ``k``'s term), so summing every peer's loss and
taking one optimizer step updates each peer with exactly its own loss: the paper's
alternating updates done simultaneously.

The peers form one module (:class:`PeerGroup`) trained by the normal trainer, whose reported
"student" is the group's mean-logit output; after training each peer is evaluated and saved
alone in ``peer<k>-<model>/`` (loadable as its plain architecture), and peer ``deploy``
is the run's deployable model. Peers may differ in architecture.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses import hard_label_ce
from ..methods import Context, Distiller, Method
from ..runs import build_model
from ._common import ModelSpec, SchemeContext, as_model, safe_name, save_members
from ._registry import Scheme, SchemeConfig, register_scheme


class PeerGroup(nn.Module):
    """Peers run side by side; ``forward`` returns the mean of their logits and keeps each
    peer's logits in ``last`` for the loss."""

    def __init__(self, peers: list[nn.Module]):
        super().__init__()
        self.peers = nn.ModuleList(peers)
        self.last: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        self.last = torch.stack([p(x) for p in self.peers])
        return self.last.mean(0)


def dml_losses(peer_logits: Tensor, labels: Tensor, peer_target: str = "each") -> tuple[Tensor, Tensor]:
    """``(sum_k CE_k, sum_k KL_k)`` for peer logits ``(K, N, C)`` (see module docstring)."""
    k = peer_logits.shape[0]
    logp = F.log_softmax(peer_logits.float(), -1)
    target = logp.detach()
    ce = sum(hard_label_ce(peer_logits[i], labels) for i in range(k))
    kl = peer_logits.new_zeros((), dtype=torch.float32)
    for i in range(k):
        others = torch.cat([target[:i], target[i + 1 :]])
        if peer_target == "each":
            kl = kl + (others.exp() * (others - logp[i])).sum(-1).mean(-1).mean()
        else:
            log_mean = torch.logsumexp(others, 0) - math.log(k - 1)
            kl = kl + (log_mean.exp() * (log_mean - logp[i])).sum(-1).mean()
    return ce, kl


class MutualLoss(Method):
    """The DML loss of a :class:`PeerGroup` student (not a registered method)."""

    name = "dml"
    needs_teacher = False

    def __init__(self, group: PeerGroup, peer_target: str, kl_weight: float):
        super().__init__(None, group, None, None)
        self._group = [group]  # a reference, not a submodule: the group is the distiller's student
        self.peer_target, self.kl_weight = peer_target, kl_weight

    def forward(self, ctx: Context) -> dict[str, Tensor]:
        ce, kl = dml_losses(self._group[0].last, ctx.labels, self.peer_target)
        return {"ce": ce, "kl": self.kl_weight * kl}


@register_scheme("dml")
class DML(Scheme):
    class Config(SchemeConfig):
        """Settings.

        Attributes:
            peers: the peers' models (default: two copies of the run's student; the paper
                mostly uses two).
            peer_target: ``each`` (mean of pairwise KLs, the paper's) or ``mean`` (KL to the
                mean of the others' probabilities, their ensemble variant).
            kl_weight: weight of the mimicry term (1 in the paper).
            deploy: index of the peer saved as the run's model.
        """

        peers: list[ModelSpec] | None = None
        peer_target: Literal["each", "mean"] = "each"
        kl_weight: Annotated[float, Field(ge=0, le=1e6)] = 1.0
        deploy: Annotated[int, Field(ge=0)] = 0

        @field_validator("peers")
        @classmethod
        def _two(cls, v):
            if v is not None and len(v) < 2:
                raise ValueError(f"mutual learning needs at least two peers, got {len(v)}")
            return v

    def run(self, ctx: SchemeContext, s: Config) -> dict:
        specs = [as_model(p) for p in s.peers] if s.peers else [ctx.cfg.student, ctx.cfg.student]
        if s.deploy >= len(specs):
            raise ConfigError(
                f"scheme.deploy is {s.deploy}, but there are only {len(specs)} peers (0..{len(specs) - 1})."
            )
        peers = []
        for i, spec in enumerate(specs):
            torch.manual_seed(ctx.cfg.train.seed + 1000 * i)  # distinct starts, also for identical peers
            peers.append(
                build_model(spec.model, spec.kwargs, ctx.data, spec.checkpoint, ctx.trust, f"peer {i}")
            )
        group = PeerGroup(peers)
        distiller = Distiller(group, None, [(1.0, MutualLoss(group, s.peer_target, s.kl_weight))])
        fit = ctx.fit(distiller, "group")
        group.cpu()
        stages = {
            "group": {
                "dir": "group",
                "model": "mean of peers",
                "test_acc": fit["final"].get("test", {}).get("acc"),
            }
        }
        saved = save_members(ctx, [(f"peer{i}-{safe_name(spec.model)}", peer, spec)
                                   for i, (spec, peer) in enumerate(zip(specs, group.peers, strict=True))], stages)
        dep = saved[s.deploy]
        from ..runs import save_model

        save_model(ctx.run_dir, group.peers[s.deploy].cpu(), dep["student"])
        return {
            "stages": stages,
            "deployed": f"peer{s.deploy}",
            "student": dep["student"],
            "final": dep["final"],
            "group": {k: fit[k] for k in ("final", "best", "epochs", "steps", "train_time_s")},
        }
