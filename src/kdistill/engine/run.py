"""One run from a config: data, teacher (trained first if needed), student, distiller,
training, and the run folder (config.yaml, metrics.jsonl, results.json, model files)."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..config import RunConfig, TrainConfig, dump_config
from ..data import ArrayDataset, Augment, DataSplits, load_dataset, mnist1d_transfer
from ..distributed import world_size
from ..errors import ConfigError, DataError, ShapeError
from ..methods import Distiller, create
from ..models import create_model
from ..profile import count_params, latency_ms, param_bytes
from ..teachers import EnsembleTeacher, ModuleTeacher, Teacher
from .checkpoint import atomic_write_json, atomic_write_text, load_into, load_weights, state_dict_tensors
from .trainer import Trainer, resolve_device


# -- data ----------------------------------------------------------------------------------
def prepare_data(cfg: RunConfig) -> DataSplits:
    """Load, subset, split and validate the run's data (the transfer set is separate)."""
    d = cfg.data
    splits = load_dataset(d.name, root=d.root, **d.options)
    train = splits.train
    if d.subset:
        train = train.subset(d.subset, seed=cfg.train.seed)
    val = splits.val
    if d.val_split > 0:
        train, val = train.split(d.val_split, seed=cfg.train.seed)
    for part in (train, splits.test, val):
        if part is not None:
            part.validate()
    return DataSplits(train, splits.test, val)


def load_transfer(cfg: RunConfig, data: DataSplits) -> ArrayDataset | None:
    t = cfg.data.transfer
    if t is None:
        return None
    if t.source == "mnist1d":
        ds = mnist1d_transfer(t.size, seed=t.seed, length=data.input_shape[-1])
    else:
        if not t.path or not Path(t.path).is_file():
            raise DataError(f"Transfer set file {t.path!r} not found; set data.transfer.path to an .npz with array 'x'.")
        arr = np.load(t.path, allow_pickle=False)
        if "x" not in arr:
            raise DataError(f"Transfer set {t.path} has no array 'x'.")
        x = torch.from_numpy(arr["x"].astype(np.float32))[: t.size]
        ds = ArrayDataset(x, torch.full((x.shape[0],), -1), data.num_classes, "transfer")
    if ds.input_shape != data.input_shape:
        raise ShapeError(
            f"The transfer set's inputs have shape {ds.input_shape}, the dataset's {data.input_shape}; "
            "they must match."
        )
    ds.num_classes = data.num_classes
    ds.validate(require_labels=False)
    return ds


# -- models --------------------------------------------------------------------------------
def build_model(name: str, kwargs: dict, data: DataSplits, checkpoint: str | None = None,
                trust: bool = False, what: str = "model") -> nn.Module:
    kw = dict(kwargs)  # an explicit num_classes / input_shape wins; check_model then reports a mismatch
    model = create_model(name, kw.pop("num_classes", data.num_classes), tuple(kw.pop("input_shape", data.input_shape)), **kw)
    if checkpoint:
        load_into(model, load_weights(checkpoint, trust=trust), what)
    check_model(model, data, what)
    return model


def check_model(model: nn.Module, data: DataSplits, what: str) -> None:
    """One probe forward: the model must accept the data and give ``num_classes`` logits."""
    example = data.train.x[:2]
    model.eval()
    try:
        with torch.no_grad():
            out = model(example)
    except (RuntimeError, ValueError) as e:
        raise ShapeError(
            f"The {what} does not accept inputs of shape {tuple(example.shape[1:])} from dataset "
            f"{data.train.name!r} (channels, size): {str(e).splitlines()[0]}"
        ) from None
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[1] != data.num_classes:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ShapeError(
            f"The {what} gives outputs of shape {shape}, but the dataset has {data.num_classes} "
            "classes; it must give (batch, classes) logits."
        )


def model_record(model: nn.Module, name: str, kwargs: dict, data: DataSplits) -> dict[str, Any]:
    return {"model": name, "kwargs": kwargs, "num_classes": data.num_classes,
            "input_shape": list(data.input_shape), "params": count_params(model), "bytes": param_bytes(model)}


def is_main_process() -> bool:
    """Whether this process writes the run folder: rank 0 of a ``torchrun`` or ``accelerate
    launch`` (both set ``RANK``), or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def sync_processes() -> None:
    """Wait until every process of a multi-process run gets here, so files the main process
    has just written (a finished stage's weights) are there for the others to read."""
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


def write_json(path: Path, obj: Any) -> None:
    """Write a run folder's JSON file from the main process only. Every process of a
    multi-process run computes the same record; one writer keeps the file that of the
    process whose weights are saved (see :func:`save_model`)."""
    if is_main_process():
        atomic_write_json(path, obj)


def save_model(run_dir: Path, model: nn.Module, record: dict[str, Any]) -> None:
    """``model.safetensors`` + ``model.json``: the deployable network and how to rebuild it."""
    from safetensors.torch import save_file

    if not is_main_process():
        return

    tmp = run_dir / ".model.safetensors.tmp"
    save_file(state_dict_tensors(model), str(tmp))
    tmp.replace(run_dir / "model.safetensors")
    atomic_write_json(run_dir / "model.json", record)


def teacher_logits_for(teacher: Teacher, x: Tensor, batch_size: int, device) -> Tensor:
    outs = []
    for i in range(0, x.shape[0], batch_size):
        outs.append(teacher({"x": x[i : i + batch_size].to(device)}).logits.float().cpu())
    return torch.cat(outs)


# -- a run ---------------------------------------------------------------------------------
def make_run_dir(cfg: RunConfig, run_dir: str | Path | None) -> Path:
    if run_dir is not None:
        return Path(run_dir)
    name = cfg.output.name or (
        f"{time.strftime('%Y%m%d-%H%M%S')}-{'+'.join(cfg.method_names())}-{cfg.student.model.replace(':', '_')}"
    )
    return Path(cfg.output.dir) / name


def _train_model(cfg_train: TrainConfig, model: nn.Module, data: DataSplits, train: ArrayDataset,
                 run_dir: Path, cfg: RunConfig, resume: bool, log, teacher: Teacher | None = None,
                 method: Any = None, teacher_logits: dict | None = None, augment=None) -> dict:
    eval_sets = {"test": data.test} | ({"val": data.val} if data.val is not None else {})
    method = with_num_data(method, len(train))
    if method is None:
        distiller = create("ce", model)
    elif isinstance(method, dict):
        m = dict(method)
        distiller = create(m.pop("name", "kd"), model, teacher, example=train.x[:8], **m)
    else:
        distiller = create(method, model, teacher, example=train.x[:8])
    a = augment or cfg.data.augment
    aug = Augment(a.shift, a.flip)
    trainer = Trainer(distiller, train, eval_sets, cfg_train, run_dir, cfg.data.batch_size,
                      cfg.data.eval_batch_size, aug, teacher_logits, log,
                      hparams=cfg.model_dump(mode="json"))
    return trainer.fit(resume=resume) | {"distiller": distiller}


def with_num_data(method: Any, num_data: int) -> Any:
    """Fill ``num_data`` (the training-set size) into every term whose config has that
    setting and leaves it unset: methods with per-sample state, such as CRD's memory banks."""
    from ..methods import METHODS

    def fill(term: Any) -> Any:
        if not isinstance(term, dict) or term.get("num_data") is not None:
            return term
        cls = METHODS.get(term.get("name", "kd"))
        if "num_data" in {f.name for f in dataclasses.fields(cls.Config)}:
            return {**term, "num_data": num_data}
        return term

    return [fill(t) for t in method] if isinstance(method, list) else fill(method)


def ensure_teacher(cfg: RunConfig, data: DataSplits, run_dir: Path, resume: bool, log, trust: bool) -> tuple[Teacher | None, dict]:
    """The run's teacher; a teacher without a checkpoint is trained first into ``run_dir/teacher``."""
    t = cfg.teacher
    if t is None:
        return None, {}
    if t.cache is not None:
        from .. import teachers

        if not hasattr(teachers, "CachedTeacher"):
            raise ConfigError("teacher.cache needs the CachedTeacher, which this version lacks.")
        cached = teachers.CachedTeacher.open(t.cache, data.train, num_classes=data.num_classes)
        return cached, {"cache": t.cache}
    members_cfg = t.ensemble or [t]
    members, records = [], []
    for i, m in enumerate(members_cfg):
        sub = run_dir / ("teacher" if len(members_cfg) == 1 else f"teacher{i}")
        what = "teacher" if len(members_cfg) == 1 else f"teacher member {i}"
        ckpt = m.checkpoint
        if ckpt is None and (sub / "model.safetensors").is_file() and (sub / "results.json").is_file():
            ckpt = str(sub / "model.safetensors")  # trained earlier in this run folder
            log(f"Using the {what} trained earlier in {sub}.")
        model = build_model(m.model, m.kwargs, data, ckpt, trust, what)
        record = model_record(model, m.model, m.kwargs, data)
        if ckpt is None:
            log(f"Training the {what} ({m.model}) first, into {sub}.")
            tcfg = cfg.teacher_train()
            if len(members_cfg) > 1:
                tcfg = tcfg.model_copy(update={"seed": tcfg.seed + 1000 * (i + 1)})
                torch.manual_seed(tcfg.seed)
                model = build_model(m.model, m.kwargs, data, None, trust, what)
            sub.mkdir(parents=True, exist_ok=True)
            res = _train_model(tcfg, model, data, data.train, sub, cfg, resume, log, augment=t.augment)
            res.pop("distiller")
            save_model(sub, model, record)
            write_json(sub / "results.json", {"role": what, **record, **res})
        record["checkpoint"] = ckpt or str(sub / "model.safetensors")
        members.append(model)
        records.append(record)
    if len(members) == 1:
        return ModuleTeacher(members[0], data.num_classes), records[0]
    return EnsembleTeacher(members, t.combine), {"ensemble": records, "combine": t.combine}


def run_experiment(cfg: RunConfig, run_dir: str | Path | None = None, resume: bool = False,
                   log: Callable[[str], None] = print, trust: bool = False) -> dict[str, Any]:
    """Run one config end to end and return (and write) its results."""
    run_dir = make_run_dir(cfg, run_dir)
    if (run_dir / "results.json").exists() and not resume:
        raise ConfigError(f"Run folder {run_dir} already holds a finished run; pick another output.name or pass --resume.")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if is_main_process():
            atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    except OSError as e:
        raise ConfigError(f"Cannot write to the run folder {run_dir}: {e.strerror or e}.") from None
    torch.manual_seed(cfg.train.seed)
    data = prepare_data(cfg)
    transfer = load_transfer(cfg, data)
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
        example = teacher_logits_for(teacher, data.test.x[:2], 2, device)  # a cache answers these by content
        if example.shape[1] != data.num_classes:
            raise ShapeError(f"The teacher gives {example.shape[1]} logits, the student {data.num_classes}; they must match.")
        sets = {"test": data.test} | ({"val": data.val} if data.val is not None else {})
        teacher_logits = {k: teacher_logits_for(teacher, v.x, cfg.data.eval_batch_size, device) for k, v in sets.items()}
        from ..metrics import classification_metrics

        teacher_record["metrics"] = {k: classification_metrics(teacher_logits[k], v.y) for k, v in sets.items()}
    train = data.train.concat(transfer) if transfer is not None else data.train
    method = cfg.method if isinstance(cfg.method, list) else dict(cfg.method)
    res = _train_model(cfg.train, student, data, train, run_dir, cfg, resume, log,
                       teacher=teacher, method=method, teacher_logits=teacher_logits)
    distiller: Distiller = res.pop("distiller")
    record["latency_ms_cpu_b1"] = _cpu_latency(student, data.input_shape)
    save_model(run_dir, student.cpu(), record)
    results = {
        "name": run_dir.name,
        "dataset": {"name": cfg.data.name, "train": len(data.train), "test": len(data.test),
                    "val": len(data.val) if data.val is not None else 0,
                    "transfer": len(transfer) if transfer is not None else 0,
                    "num_classes": data.num_classes, "fingerprint": data.train.fingerprint()},
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


def _cpu_latency(model: nn.Module, input_shape) -> dict:
    m = model.to("cpu")
    return latency_ms(m, tuple(input_shape), batch_size=1, repeats=30, warmup=5)


def read_results(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "results.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{run_dir} has no results.json (not a finished run folder).") from None
    except ValueError:
        raise ConfigError(f"{path} is damaged (not valid JSON).") from None
