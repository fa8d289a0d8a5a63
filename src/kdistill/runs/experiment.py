"""One run from a config: data, teacher (trained first if needed), student, distiller,
training, and the run folder (config.yaml, metrics.jsonl, results.json, model files)."""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import RunConfig, TrainConfig, dump_config, validate_config
from ..data import Augment, Dataset, DataSplits
from ..devices import resolve_device
from ..engine.checkpoint import atomic_write_text
from ..engine.trainer import Trainer
from ..errors import ConfigError, ShapeError
from ..measure import latency_ms
from ..methods import Distiller, create
from ..metrics import classification_metrics
from ..teacher_input import unwrap
from ..teachers import TEACHER_KINDS, EnsembleTeacher, ModuleTeacher, Teacher, register_teacher_kind
from .build import build_model, load_transfer, model_record, open_teacher_cache, teacher_adapter, with_num_data
from .folder import is_main_process, open_run_dir, save_model, sync_processes, write_json
from .preflight import preflight


def cpu_latency(model: nn.Module, input_shape) -> dict:
    """Median CPU latency at batch size 1 (30 timed passes after 5 warm-up passes)."""
    return latency_ms(model.to("cpu"), tuple(input_shape), batch_size=1, repeats=30, warmup=5)


def teacher_logits_for(teacher: Teacher, data: Dataset | Tensor, batch_size: int, device) -> Tensor:
    """The teacher's logits for every input of ``data`` (a dataset or a tensor of inputs),
    as one float32 CPU tensor. Batches carry inputs only, so a cache answers by content."""
    if isinstance(data, Tensor):
        chunks = (data[i : i + batch_size] for i in range(0, data.shape[0], batch_size))
    else:
        chunks = (b["x"] for b in data.batches(batch_size))
    return torch.cat([teacher({"x": x.to(device)}).logits.float().cpu() for x in chunks])


def train_model(cfg_train: TrainConfig, model: nn.Module, data: DataSplits, train: Dataset,
                run_dir: Path, cfg: RunConfig, resume: bool, log, teacher: Teacher | None = None,
                method: Any = None, teacher_logits: dict | None = None, augment=None,
                role: str | None = None) -> dict:
    """Train ``model`` on ``train`` with ``method`` (cross-entropy when ``None``) and
    return the Trainer's results plus the ``distiller``."""
    eval_sets = {"test": data.test} | ({"val": data.val} if data.val is not None else {})
    method = with_num_data(method, len(train))
    example = train.example(8)
    if method is None:
        distiller = create("ce", model)
    elif isinstance(method, dict):
        m = dict(method)
        distiller = create(m.pop("name", "kd"), model, teacher, example=example, **m)
    else:
        distiller = create(method, model, teacher, example=example)
    a = augment or cfg.data.augment
    # the data section's recipe (bound to the dataset by its loader), unless a teacher's own augment replaces it
    aug = cfg.data.recipe if augment is None and cfg.data.recipe is not None else Augment(a.shift, a.flip)
    trainer = Trainer(distiller, train, eval_sets, cfg_train, run_dir, cfg.data.batch_size,
                      cfg.data.eval_batch_size, aug, teacher_logits, log,
                      hparams=cfg.model_dump(mode="json"), role=role)
    return trainer.fit(resume=resume) | {"distiller": distiller}


@dataclass
class TeacherContext:
    """What a teacher kind's builder (:func:`kdistill.teachers.register_teacher_kind`) gets:
    the run's config, data splits, run folder, and two helpers."""

    cfg: RunConfig
    data: DataSplits
    run_dir: Path
    resume: bool
    log: Callable[[str], None]
    trust: bool = False

    def build_model(self, name: str, kwargs: dict | None = None, checkpoint: str | None = None,
                    what: str = "teacher") -> nn.Module:
        """A zoo model sized for the run's data (with ``checkpoint``'s weights when given)."""
        return build_model(name, kwargs or {}, self.data, checkpoint, self.trust, what)

    def train(self, model: nn.Module, name: str = "teacher", what: str = "teacher",
              record: dict[str, Any] | None = None) -> dict[str, Any]:
        """Train ``model`` with cross-entropy on the training split, with the teacher's train
        settings (the run's, overridden by ``teacher.train``), into ``run_dir/name``; saves
        ``model.safetensors`` and ``results.json`` (with ``record``, by default the model's
        class name and size) there and returns the results."""
        sub = self.run_dir / name
        sub.mkdir(parents=True, exist_ok=True)
        self.log(f"Training the {what} first, into {sub}.")
        t = self.cfg.teacher
        res = train_model(self.cfg.teacher_train(), model, self.data, self.data.train, sub, self.cfg, self.resume,
                          self.log, augment=t.augment if t is not None else None)
        res.pop("distiller")
        record = record or model_record(model, type(model).__name__, {}, self.data)
        save_model(sub, model, record)
        write_json(sub / "results.json", {"role": what, **record, **res})
        return res


def ensure_teacher(cfg: RunConfig, data: DataSplits, run_dir: Path, resume: bool, log,
                   trust: bool) -> tuple[Teacher | None, dict]:
    """The run's teacher, made by its kind (``teacher.kind``, see :data:`kdistill.teachers.TEACHER_KINDS`);
    the default kind trains a teacher without a checkpoint first into ``run_dir/teacher`` (a
    complete run folder of its own: ``kdistill eval/export/profile RUN/teacher`` work)."""
    t = cfg.teacher
    if t is None:
        return None, {}
    ctx = TeacherContext(cfg, data, Path(run_dir), resume, log, trust)
    return TEACHER_KINDS.get(t.kind).make(t.options, ctx)


@register_teacher_kind("default")
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
    return EnsembleTeacher(members, t.combine), {"ensemble": records, "combine": t.combine}


def write_teacher_config(sub: Path, cfg: RunConfig, m, tcfg: TrainConfig) -> None:
    """``sub/config.yaml``: the teacher's training as a run of its own (the teacher as the
    student, cross-entropy, the teacher's train section), so ``RUN/teacher`` is a run folder."""
    raw = cfg.model_dump(mode="json")
    raw.update(teacher=None, scheme=None, method={"name": "ce"},
               student={"model": m.model, "kwargs": m.kwargs}, train=tcfg.model_dump(mode="json"),
               output={"dir": str(sub.parent), "name": sub.name})
    raw["data"]["transfer"] = None
    if cfg.teacher is not None and cfg.teacher.augment is not None:
        raw["data"]["augment"] = cfg.teacher.augment.model_dump(mode="json")
    if is_main_process():
        atomic_write_text(sub / "config.yaml", dump_config(validate_config(raw)))


def run_experiment(cfg: RunConfig, run_dir: str | Path | None = None, resume: bool = False,
                   log: Callable[[str], None] = print, trust: bool = False) -> dict[str, Any]:
    """Run one config end to end and return (and write) its results.

    Everything is checked first (:func:`~kdistill.runs.preflight.preflight`): a mistake in
    the data, a model, a tap or a method term is reported before the teacher trains."""
    checked = preflight(cfg, trust)
    run_dir = open_run_dir(cfg, run_dir, resume)
    torch.manual_seed(cfg.train.seed)
    data = checked.data
    transfer = checked.transfer if checked.transfer is not None else load_transfer(cfg, data)
    device = resolve_device(cfg.train.device)
    teacher, teacher_record = ensure_teacher(cfg, data, run_dir, resume, log, trust)
    if transfer is not None and teacher is None:
        raise ConfigError("A transfer set is labelled by the teacher; configure a teacher.")

    torch.manual_seed(cfg.train.seed)
    s = cfg.student
    student = build_model(s.model, s.kwargs, data, s.checkpoint, trust, "student")
    record = model_record(student, s.model, s.kwargs, data)

    teacher_logits = None
    if teacher is not None:
        teacher.to(device)
        example = teacher_logits_for(teacher, data.test.example(2), 2, device)  # a cache answers these by content
        if example.shape[1] != data.num_classes:
            raise ShapeError(f"The teacher gives {example.shape[1]} logits, the student {data.num_classes}; they must match.")
        sets = {"test": data.test} | ({"val": data.val} if data.val is not None else {})
        teacher_logits = {k: teacher_logits_for(teacher, v, cfg.data.eval_batch_size, device) for k, v in sets.items()}
        teacher_record["metrics"] = {k: classification_metrics(teacher_logits[k], v.labels()) for k, v in sets.items()}
        log(f"Teacher test accuracy {teacher_record['metrics']['test']['acc']:.4f} "
            f"({len(data.test)} test samples, before the student trains).")
    train = data.train.concat(transfer) if transfer is not None else data.train
    method = cfg.method if isinstance(cfg.method, list) else dict(cfg.method)
    res = train_model(cfg.train, student, data, train, run_dir, cfg, resume, log,
                      teacher=teacher, method=method, teacher_logits=teacher_logits, role="student")
    distiller: Distiller = res.pop("distiller")
    record["latency_ms_cpu_b1"] = cpu_latency(student, data.input_shape)
    save_model(run_dir, student.cpu(), record)
    results = {
        "name": run_dir.name,
        "dataset": {"name": cfg.data.name, "train": len(data.train), "test": len(data.test),
                    "val": len(data.val) if data.val is not None else 0,
                    "transfer": len(transfer) if transfer is not None else 0,
                    "num_classes": data.num_classes, "fingerprint": data.train.fingerprint(),
                    # unreadable images skipped (image sources with on_bad: skip)
                    "skipped_images": sum(len(getattr(p, "skipped", ())) for p in (data.train, data.test, data.val))},
        "method": [f"{w:g}*{m.name}" for w, m in zip(distiller.weights, distiller.terms)],
        "student": record,
        "teacher": teacher_record,
        **res,
        "seed": cfg.train.seed,
        "torch": torch.__version__,
        "host": platform.node(),
    }
    write_json(run_dir / "results.json", results)
    sync_processes()  # a scheme's next stage reads this run's files on every process
    return results | {"run_dir": str(run_dir)}
