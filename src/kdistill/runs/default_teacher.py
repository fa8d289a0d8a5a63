"""The default teacher kind: the ``teacher:`` section's own keys (one ``model``, an
``ensemble`` or a ``cache``). It is an ordinary registered kind: everything that once asked
"is this the default kind?" (``--check``, compare's teacher sharing, ``kdistill eval``, the
record's label, the epochs check) calls its hooks instead, as it would any kind's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig, RunConfig
from ..data import DataSplits
from ..measure import count_params
from ..teacher_input import unwrap
from ..teachers import EnsembleTeacher, ModuleTeacher, Teacher, register_teacher_kind
from .build import build_model, model_record, open_teacher_cache, teacher_adapter, teacher_from_checkpoints
from .experiment import TeacherContext, train_model, write_teacher_config
from .folder import save_model, sync_processes, write_json
from .grid import _with
from .preflight import _build


def _preflight(cfg: RunConfig, data: DataSplits, trust: bool, lines: list[str]):
    """The teacher a run will use, untrained (or with its checkpoints' weights), for ``--check``."""
    t = cfg.teacher
    if t.cache is not None:
        lines.append(f"teacher: cache {t.cache}")
        return open_teacher_cache(t, data, trust), []  # checked against the teacher when the config names it
    members = t.ensemble or [ModelConfig(model=t.model, kwargs=t.kwargs, checkpoint=t.checkpoint)]
    many = len(members) > 1
    adapt = teacher_adapter(t, data)
    built = []
    for i, m in enumerate(members):
        what = f"teacher member {i}" if many else "teacher"
        built.append(_build(m, data, trust, what, adapt))
        state = (f"weights from {m.checkpoint}" + (", fine-tuned first" if t.finetune else "")
                 if m.checkpoint else "to be trained first")
        lines.append(f"{what}: {m.model} ({count_params(built[-1]):,} params, {state})")
    if not many:
        return ModuleTeacher(built[0], data.num_classes), members
    return EnsembleTeacher(built, t.combine, t.weights, t.weighting), members


def default_teacher(options: dict, ctx: TeacherContext) -> tuple[Teacher, dict]:
    """The teacher section's own keys: cached outputs (``cache``), one model or an
    ``ensemble``; a model without a checkpoint is trained first into ``run_dir/teacher``."""
    cfg, data, run_dir, resume, log, trust = ctx.cfg, ctx.data, ctx.run_dir, ctx.resume, ctx.log, ctx.trust
    t = cfg.teacher
    if t.cache is not None:
        cached = open_teacher_cache(t, data, trust)  # checked against the teacher when the config names it
        log(f"Teacher: cached outputs from {t.cache}.")
        return cached, {"cache": t.cache}
    members_cfg = t.ensemble or [t]
    adapt = teacher_adapter(t, data)
    if adapt is not None:
        log(f"Teacher input: {adapt.spec.describe()}.")
    members, records = [], []
    for i, m in enumerate(members_cfg):
        sub = run_dir / ("teacher" if len(members_cfg) == 1 else f"teacher{i}")
        what = "teacher" if len(members_cfg) == 1 else f"teacher member {i}"
        ckpt = m.checkpoint
        start = ckpt if t.finetune else None  # the weights a fine-tuned teacher starts from
        if (ckpt is None or t.finetune) and (sub / "model.safetensors").is_file() and (sub / "results.json").is_file():
            ckpt = str(sub / "model.safetensors")  # trained earlier in this run folder
            log(f"Using the {what} trained earlier in {sub}.")
        elif t.finetune:
            ckpt = None  # loaded below as the start, then trained
        model = build_model(m.model, m.kwargs, data, ckpt or start, trust, what, log=log, adapt=adapt)
        record = model_record(unwrap(model), m.model, m.kwargs, data)
        if adapt is not None:  # the saved network takes the teacher's format; model.json says how to convert
            record["input"] = adapt.spec.as_dict() | {"net_input_shape": list(adapt.input_shape(data.input_shape))}
        if ckpt is None:
            log(f"{'Fine-tuning' if start else 'Training'} the {what} ({m.model}) first, into {sub}.")
            tcfg = cfg.teacher_train()
            if len(members_cfg) > 1:
                tcfg = tcfg.model_copy(update={"seed": tcfg.seed + 1000 * (i + 1)})
                torch.manual_seed(tcfg.seed)
                model = build_model(m.model, m.kwargs, data, start, trust, what, adapt=adapt)
            sub.mkdir(parents=True, exist_ok=True)
            write_teacher_config(sub, cfg, m, tcfg)
            res = train_model(tcfg, model, data, data.train, sub, cfg, resume, log, augment=t.augment,
                              role=what)
            res.pop("distiller")
            save_model(sub, unwrap(model), record)
            write_json(sub / "results.json", {"role": what, "name": sub.name, "student": record, **record, **res})
            # the teacher the student learns from is the saved one, loaded as a resumed run
            # loads it: the trained module has the trainer's memory format and compilation,
            # whose logits differ in the last bits from a fresh network's (issue 15)
            sync_processes()
            model = build_model(m.model, m.kwargs, data, str(sub / "model.safetensors"), trust, what, adapt=adapt)
        record["checkpoint"] = ckpt or str(sub / "model.safetensors")
        members.append(model)
        records.append(record)
    if len(members) == 1:
        return ModuleTeacher(members[0], data.num_classes), records[0]
    return EnsembleTeacher(members, t.combine, t.weights, t.weighting), {"ensemble": records, "combine": t.combine,
                                                                        "weights": t.weights, "weighting": t.weighting}


def _untrained(cfg: RunConfig) -> bool:
    """Whether the run trains a teacher first: a model without a checkpoint, or fine-tuning."""
    t = cfg.teacher
    return t.cache is None and any(not m.checkpoint or t.finetune for m in (t.ensemble or [t]))


def _share_key(cfg: RunConfig, mode: str) -> str | None:
    """Cells with the same key share one trained teacher (``None``: nothing to train)."""
    import json

    t = cfg.teacher
    if t.cache is not None:
        return None
    if (t.model is not None and t.checkpoint) or (t.ensemble and all(m.checkpoint for m in t.ensemble)):
        return None
    train = cfg.teacher_train().model_dump()
    if mode == "shared":
        train.pop("seed")
    return json.dumps([t.model_dump(), train, cfg.data.model_dump()], sort_keys=True, default=str)


def _shared(cell_dir: Path, cfg: RunConfig) -> list[str]:
    """The checkpoints the first cell trained (one per ensemble member)."""
    t = cfg.teacher
    if t.ensemble:
        return [str((cell_dir / f"teacher{i}" / "model.safetensors").resolve()) for i in range(len(t.ensemble))]
    return [str((cell_dir / "teacher" / "model.safetensors").resolve())]


def _reuse(cfg: RunConfig, paths: list[str]) -> RunConfig:
    """``cfg`` with its teacher (or every member) at the shared checkpoints."""
    if cfg.teacher.ensemble:
        pairs = zip(cfg.teacher.ensemble, paths, strict=True)
        return _with(cfg, {"teacher.ensemble": [m.model_dump() | {"checkpoint": p} for m, p in pairs]})
    return _with(cfg, {"teacher.checkpoint": paths[0]})


def _from_checkpoints(cfg: RunConfig, data: DataSplits, trust: Any, source: str | None = None) -> Teacher | None:
    """The config's trained teacher when every network of it has a checkpoint, else None."""
    t = cfg.teacher
    if t.cache is not None or not all(m.checkpoint for m in (t.ensemble or [t])) or (t.model is None and not t.ensemble):
        return None
    return teacher_from_checkpoints(t, data, trust_code=trust, source=source)


register_teacher_kind("default", labelled=False, preflight=_preflight, untrained=_untrained, share_key=_share_key,
                      shared=_shared, reuse=_reuse, from_checkpoints=_from_checkpoints)(default_teacher)
