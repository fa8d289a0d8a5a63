"""A generalist and specialists on the classes it confuses (Hinton et al. 2015, section 5).

Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network",
arXiv:1503.02531, sections 5.2-5.4 (JFT):

* **Clusters** (5.3): k-means on the columns of the covariance matrix of the generalist's
  predicted probability vectors over the training set, so classes that are often predicted
  together go to one specialist (the paper uses an online k-means).
* **Specialists** (5.2): the generalist's architecture, initialised from its weights, with a
  softmax over their classes plus one *dustbin* class for all others; trained on their
  classes' examples plus an equal share (``other_fraction``) of random others, after which
  the dustbin logit is raised by the log of the factor by which the others were
  under-sampled (the paper's correction for its biased training set).
* **Inference** (5.4): take the generalist's ``top_n`` classes (the paper: 1); the active
  specialists are those covering one of them; find the full distribution ``q`` minimising
  ``KL(p_g || q) + sum_m KL(p_m || q_m)``, where ``q_m`` lumps ``q``'s mass outside the
  specialist's classes into its dustbin, by gradient descent on the logits of ``q``. A test
  case with no active specialist keeps the generalist's distribution (it is the minimiser).

Folders: ``generalist/`` (trained unless it has a checkpoint), ``specialist<m>/`` (each a
run folder on the remapped labels; ``model.json`` lists its classes), ``combined/``.
The generalist's classifier must be a final ``nn.Linear`` (the zoo's models are).
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ..config import TrainConfig
from ..data import Dataset
from ..errors import ConfigError
from ..methods import create
from ..metrics import accuracy, predict_logits
from ..models import default_taps
from ..runs import build_model, model_record, save_model, write_json
from ..taps import split_tap
from ._common import ModelSpec, SchemeContext, as_model, model_path, summary
from ._registry import Scheme, SchemeConfig, register_scheme


def confusion_clusters(probs: Tensor, k: int, seed: int = 0, iters: int = 100) -> list[list[int]]:
    """Classes grouped by k-means (k-means++ start) on the columns of ``cov(probs)``."""
    cov = torch.cov(probs.double().T)  # (C, C); column c: how class c's probability co-varies
    pts = cov.T
    c = pts.shape[0]
    k = min(k, c)
    g = torch.Generator().manual_seed(seed)
    centres = [pts[torch.randint(c, (1,), generator=g).item()]]
    for _ in range(1, k):
        d = torch.cdist(pts, torch.stack(centres)).min(1).values ** 2
        idx = torch.multinomial(d / d.sum(), 1, generator=g).item() if d.sum() > 0 else len(centres)
        centres.append(pts[idx])
    cent = torch.stack(centres)
    assign = torch.zeros(c, dtype=torch.long)
    for _ in range(iters):
        new = torch.cdist(pts, cent).argmin(1)
        if _ and torch.equal(new, assign):
            break
        assign = new
        for j in range(k):
            if (assign == j).any():
                cent[j] = pts[assign == j].mean(0)
    return [sorted((assign == j).nonzero().flatten().tolist()) for j in range(k) if (assign == j).any()]


def combine_specialists(
    gen_logits: Tensor,
    spec_logits: list[Tensor],
    subsets: list[list[int]],
    top_n: int = 1,
    steps: int = 200,
    lr: float = 0.1,
) -> Tensor:
    """Log-probabilities ``log q`` (N, C) combining a generalist and specialists (section 5.4).

    Args:
        gen_logits: the generalist's logits ``(N, C)``.
        spec_logits: specialist ``m``'s logits ``(N, |S_m| + 1)``, the dustbin last.
        subsets: the classes ``S_m`` of each specialist, in its logit order.
        top_n: how many of the generalist's most probable classes select the specialists.
        steps, lr: Adam steps and step size on the logits of ``q`` (started at the generalist's).
    """
    log_pg = F.log_softmax(gen_logits.float(), -1)
    n, c = log_pg.shape
    if not subsets:
        return log_pg
    top = log_pg.topk(min(top_n, c), -1).indices
    member = torch.zeros(len(subsets), c, dtype=torch.bool)
    for m, s in enumerate(subsets):
        member[m, s] = True
    active = member[:, top].any(-1).T  # (N, M)
    rows = active.any(1)
    out = log_pg.clone()
    if not rows.any():
        return out
    lp_spec = [F.log_softmax(s.float()[rows], -1) for s in spec_logits]
    act = active[rows].float()
    z = log_pg[rows].clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        log_q = F.log_softmax(z, -1)
        loss = -(log_pg[rows].exp() * log_q).sum(-1)  # KL(p_g||q) up to a constant
        for m, s in enumerate(subsets):
            rest = ~member[m]
            dust = (
                torch.logsumexp(log_q[:, rest], -1, keepdim=True)
                if rest.any()
                else log_q.new_full((log_q.shape[0], 1), -float("inf"))
            )
            log_qm = torch.cat([log_q[:, s], dust], -1)
            p_m = lp_spec[m].exp()
            ce = -(torch.where(p_m > 0, p_m * log_qm, torch.zeros_like(p_m))).sum(-1)
            loss = loss + act[:, m] * ce
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
    out[rows] = F.log_softmax(z.detach(), -1)
    return out


def classifier_path(model: nn.Module) -> str:
    emb = default_taps(model).get("embedding")
    path = split_tap(emb)[0] if emb else None
    if not path or not isinstance(model.get_submodule(path), nn.Linear):
        raise ConfigError(
            "Specialists need a model whose classifier is a final nn.Linear (declared by its "
            "default_taps 'embedding' as '<linear>:input')."
        )
    return path


def make_specialist(generalist: nn.Module, classes: list[int]) -> nn.Module:
    """A copy of the generalist whose classifier covers ``classes`` plus a dustbin.

    The dustbin row starts as the mean of the other classes' rows, its bias raised by
    ``log(#others)`` so the dustbin's initial logit approximates the others' log-sum-exp.
    """
    import copy

    model = copy.deepcopy(generalist)
    path = classifier_path(model)
    old: nn.Linear = model.get_submodule(path)
    rest = [c for c in range(old.out_features) if c not in classes]
    new = nn.Linear(old.in_features, len(classes) + 1, bias=True)
    with torch.no_grad():
        new.weight[:-1] = old.weight[classes]
        new.weight[-1] = old.weight[rest].mean(0) if rest else 0.0
        b = old.bias if old.bias is not None else torch.zeros(old.out_features)
        new.bias[:-1] = b[classes]
        new.bias[-1] = (b[rest].mean() + math.log(len(rest))) if rest else -30.0
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)
    return model


def remap(ds: Dataset, classes: list[int]) -> Dataset:
    """Labels of ``classes`` become 0..|S|-1, every other label the dustbin |S|."""
    lut = torch.full((ds.num_classes,), len(classes), dtype=torch.long)
    lut[classes] = torch.arange(len(classes))
    return ds.relabel(lut, len(classes) + 1)


@register_scheme("specialists")
class Specialists(Scheme):
    class Config(SchemeConfig):
        """Settings.

        Attributes:
            generalist: its model (default: the run's teacher model, else student); with a
                checkpoint it is used as is.
            clusters: k of the k-means over classes.
            min_classes: clusters with fewer classes get no specialist.
            other_fraction: share of a specialist's training set drawn from other classes
                (the paper: half).
            top_n: generalist classes that select the active specialists (the paper: 1).
            steps, lr: gradient descent on the combined distribution's logits.
            specialist_train: overrides of the train section for specialists.
        """

        generalist: ModelSpec | None = None
        clusters: Annotated[int, Field(ge=1, le=10000)] = 3
        min_classes: Annotated[int, Field(ge=1)] = 2
        other_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.5
        top_n: Annotated[int, Field(ge=1)] = 1
        steps: Annotated[int, Field(ge=1, le=100000)] = 200
        lr: Annotated[float, Field(gt=0, le=100)] = 0.1
        specialist_train: dict = Field(default_factory=dict)

    def run(self, ctx: SchemeContext, s: Config) -> dict:
        cfg = ctx.cfg
        spec, gen_summary = _generalist_spec(ctx, s)
        data = ctx.data
        generalist = build_model(spec.model, spec.kwargs, data, spec.checkpoint, ctx.trust, "generalist")
        classifier_path(generalist)
        bs = cfg.data.eval_batch_size
        train_probs = predict_logits(generalist, data.train, bs).softmax(-1)
        clusters = confusion_clusters(train_probs, s.clusters, cfg.train.seed)
        subsets = [c for c in clusters if len(c) >= s.min_classes and len(c) < data.num_classes]
        ctx.log(f"Class clusters: {clusters}; specialists for {subsets}")

        tcfg = TrainConfig(**(cfg.train.model_dump() | s.specialist_train))
        stages = {"generalist": gen_summary}
        specialists = []
        g = torch.Generator().manual_seed(cfg.train.seed)
        for m, classes in enumerate(subsets):
            model, stages[f"specialist{m}"] = _train_specialist(ctx, s, spec, generalist, f"specialist{m}", classes,
                                                                tcfg, g)
            specialists.append(model)
        covered = sorted({c for sub in subsets for c in sub})
        combined = {split: _combined_metrics(generalist, specialists, ds, subsets, covered, s, bs)
                    for split, ds in ctx.eval_sets().items()}
        write_json(
            ctx.run_dir / "combined" / "results.json",
            {"name": "combined", "subsets": subsets, "covered_classes": covered, "final": combined},
        )
        stages["combined"] = {"dir": "combined", **combined["test"]}
        return {
            "stages": stages,
            "clusters": clusters,
            "subsets": subsets,
            "covered_classes": covered,
            "combined": combined,
        }


def _generalist_spec(ctx: SchemeContext, s: Specialists.Config):
    """The generalist's model spec (trained first, as a step, when it has no checkpoint) and
    its summary for the results."""
    cfg = ctx.cfg
    if s.generalist is not None:
        spec = as_model(s.generalist)
    elif cfg.teacher is not None and cfg.teacher.model:
        spec = as_model(cfg.teacher.model).model_copy(
            update={"kwargs": cfg.teacher.kwargs, "checkpoint": cfg.teacher.checkpoint}
        )
    else:
        spec = cfg.student
    if spec.checkpoint is not None:
        return spec, {"dir": None, "model": spec.model, "checkpoint": spec.checkpoint}
    gen_res = ctx.run_step("generalist", spec, train=ctx.scratch_train())
    return spec.model_copy(update={"checkpoint": model_path(gen_res)}), summary(gen_res)


def _train_specialist(ctx: SchemeContext, s: Specialists.Config, spec, generalist: nn.Module, name: str,
                      classes: list[int], tcfg: TrainConfig, g: torch.Generator) -> tuple[nn.Module, dict]:
    """One specialist: the generalist's copy with a head over ``classes`` + a dustbin, trained
    on the samples of its classes and a share of the others; saved in ``RUN/<name>``."""
    data = ctx.data
    model = make_specialist(generalist, classes)
    mask = torch.isin(data.train.labels(), torch.tensor(classes))
    inside, others = mask.nonzero().flatten(), (~mask).nonzero().flatten()
    want = int(round(len(inside) * s.other_fraction / (1 - s.other_fraction)))
    used = others[torch.randperm(len(others), generator=g)[: min(want, len(others))]]
    idx = torch.cat([inside, used]).sort().values
    train = remap(data.train.select(idx), classes)
    evals = {k: remap(v, classes) for k, v in ctx.eval_sets().items()}
    fit = ctx.fit(create("ce", model), name, tcfg, train, evals)
    if len(used) and len(used) < len(others):
        head = model.get_submodule(classifier_path(generalist))
        with torch.no_grad():  # the paper's correction for the under-sampled dustbin
            head.bias[-1] += math.log(len(others) / len(used))
    record = model_record(model, spec.model, spec.kwargs, data) | {
        "num_classes": len(classes) + 1,
        "classes": classes,
        "dustbin": len(classes),
    }
    save_model(ctx.run_dir / name, model.cpu(), record)
    write_json(ctx.run_dir / name / "results.json", {"name": name, "student": record, **fit})
    return model, {"dir": name, "classes": classes, "test_acc_remapped": fit["final"]["test"]["acc"]}


def _combined_metrics(generalist: nn.Module, specialists: list[nn.Module], ds, subsets: list[list[int]],
                      covered: list[int], s: Specialists.Config, bs: int) -> dict:
    """Generalist and combined (generalist + specialists) accuracy on one split, overall and
    on the samples of the specialists' classes."""
    y = ds.labels()
    gl = predict_logits(generalist, ds, bs)
    sl = [predict_logits(sp, ds, bs) for sp in specialists]
    q = (
        torch.cat([
            combine_specialists(gl[i : i + bs], [x[i : i + bs] for x in sl], subsets, s.top_n, s.steps, s.lr)
            for i in range(0, len(ds), bs)
        ])
        if len(ds)
        else gl
    )
    on = torch.isin(y, torch.tensor(covered, dtype=torch.long)) if covered else torch.zeros_like(y, dtype=torch.bool)
    return {
        "generalist_acc": accuracy(gl, y),
        "combined_acc": accuracy(q, y),
        "covered_samples": int(on.sum()),
        "generalist_acc_covered": accuracy(gl[on], y[on]) if on.any() else None,
        "combined_acc_covered": accuracy(q[on], y[on]) if on.any() else None,
    }
