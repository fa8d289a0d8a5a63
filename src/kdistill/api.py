"""The Python entry point of a whole training: :func:`train`.

Two ways in, one result:

* a **config** (a dict, a YAML path, or a :class:`~kdistill.config.RunConfig`): the same run
  as ``kdistill train CONFIG`` (teacher trained first if it has no checkpoint, schemes
  included), with the same run folder and ``results.json``;
* **objects**: your ``student`` and (trained) ``teacher`` modules and your data, as torch
  datasets, ``DataLoader``\\ s or ``(x, y)`` tensors or arrays. Training data is used as
  given: a DataLoader keeps its batch size, order, workers and transforms and is read afresh
  every epoch; tensors stay in memory (kdistill's device-resident loader shuffles and
  batches them). Evaluation sets are read once into memory. Every check of ``kdistill train
  --check`` runs first, and the student is trained in place.

Both return the run's results (``final``/``best`` metrics per split, ``teacher`` metrics,
``run_dir``); the object form adds the trained ``distiller``.
"""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import Tensor, nn

from .config import RunConfig, TrainConfig, load_config
from .data import ArrayDataset, Augment, Dataset, DataSplits
from .data.torchdata import TorchDataset, as_batch
from .devices import resolve_device
from .engine.trainer import Trainer
from .errors import ConfigError, ShapeError, did_you_mean
from .methods import create
from .metrics import classification_metrics, predict_logits
from .runs.build import check_model, with_num_data
from .runs.folder import write_json
from .runs.preflight import check_method, check_splits
from .task import DEFAULT_TASK, task_named

DataLike = Any  # a torch Dataset, a DataLoader, an (x, y) pair of tensors or arrays, or an ArrayDataset


def _quiet(_line: str) -> None:
    pass


def _in_memory(data: DataLike, what: str) -> tuple[Tensor, Tensor] | None:
    """``(x, y)`` of the data forms held in memory already (tensors, arrays, an ArrayDataset);
    ``None`` for a torch Dataset or DataLoader."""
    if isinstance(data, ArrayDataset):  # through the dataset protocol, like every consumer
        return data.take(torch.arange(len(data)))["x"], data.labels()
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, (Tensor, np.ndarray)) for t in data):
        b = as_batch(data, what)
        return b["x"], b["y"]
    if isinstance(data, (torch.utils.data.DataLoader, torch.utils.data.Dataset)) or hasattr(data, "__getitem__"):
        return None
    raise ConfigError(f"{what}: give a torch Dataset, a DataLoader or an (x, y) pair of tensors or NumPy "
                      f"arrays, not {type(data).__name__}.")


def as_dataset(data: DataLike, what: str, num_classes: int | None = None) -> ArrayDataset:
    """Any accepted data form read into memory as an :class:`~kdistill.data.ArrayDataset`
    (evaluation sets: read once, in order)."""
    pair = _in_memory(data, what)
    if pair is None:
        parts = list(TorchDataset(data, num_classes or 1, what).batches(1024))
        pair = torch.cat([b["x"] for b in parts]), torch.cat([b["y"] for b in parts])
    x, y = pair
    k = int(num_classes if num_classes is not None else int(y.max()) + 1)
    return ArrayDataset(x.detach().cpu().float(), y.detach().cpu().long(), k, what)


def _train_set(data: DataLike, batch_size: int) -> Dataset:
    """The training data as given: tensors stay in memory (kdistill's device loader batches them
    at ``batch_size``); a DataLoader is used as it is (its batch size, order, workers and
    transforms, iterated every epoch); a torch Dataset is batched at ``batch_size``."""
    pair = _in_memory(data, "train_data")
    if pair is not None:
        return ArrayDataset(pair[0].detach().cpu().float(), pair[1].detach().cpu().long(), 1, "train_data")
    return TorchDataset(data, 1, "train_data", batch_size)


def _outputs(model: nn.Module, x: Tensor, what: str) -> int:
    """How many classes ``model`` predicts (its output width on ``x``)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except (RuntimeError, ValueError) as e:
        raise ShapeError(f"The {what} does not accept the training inputs of shape {tuple(x.shape[1:])}: "
                         f"{str(e).splitlines()[0]}") from None
    finally:
        model.train(was)
    if not isinstance(out, Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ShapeError(f"The {what} gives outputs of shape {shape}; it must give (batch, classes) logits.")
    return int(out.shape[1])


def _class_count(student: nn.Module, teacher: nn.Module | None, example: Tensor, num_classes: int | None) -> int:
    """The label space: ``num_classes`` when given, else the student's output width; a
    teacher predicting another number of classes is an error."""
    s = _outputs(student, example, "student")
    if teacher is not None:
        t = _outputs(teacher, example, "teacher")
        if t != s:
            raise ShapeError(f"The teacher predicts {t} classes and the student {s}: they must share one label "
                             "space (give the student a head of the teacher's width).")
    return int(num_classes) if num_classes is not None else s


def _train_config(epochs: int, quiet: bool, settings: dict[str, Any]) -> TrainConfig:
    """The train section from ``kd.train``'s keywords; an unknown keyword is named (with the
    closest known one), as is a bad value."""
    known = set(TrainConfig.model_fields)
    for key in settings:
        if key not in known:
            names = known | set(inspect.signature(train).parameters) - {"train_settings"}
            raise ConfigError(f"kdistill.train got an unknown keyword {key!r}.{did_you_mean(key, names)}")
    try:
        cfg = TrainConfig(epochs=epochs, **({"progress": False} if quiet else {}) | settings)
    except ValidationError as e:  # name the bad setting
        err = e.errors()[0]
        raise ConfigError(f"kdistill.train: {'.'.join(map(str, err['loc']))}: {err['msg']}.") from None
    if cfg.epochs == 0 and not cfg.max_steps:
        raise ConfigError("epochs is 0: nothing would be trained.")
    return cfg


def train(
    config: dict | str | Path | RunConfig | None = None,
    *,
    student: nn.Module | None = None,
    teacher: nn.Module | None = None,
    train_data: DataLike = None,
    test_data: DataLike = None,
    val_data: DataLike = None,
    method: str | dict | list | None = None,
    num_classes: int | None = None,
    epochs: int = 10,
    batch_size: int = 128,
    run_dir: str | Path | None = None,
    overrides: Iterable[str] = (),
    quiet: bool = False,
    log: Callable[[str], None] | None = None,
    task: str | None = None,
    **train_settings: Any,
) -> dict[str, Any]:
    """Train a student and return the run's results.

    With ``config`` (a dict, a YAML path or a ``RunConfig``; ``overrides`` are ``--set``
    strings): exactly ``kdistill train``. Otherwise give objects:

    Args:
        student: the network to train (trained in place).
        teacher: a trained network (frozen), or ``None`` with ``method="ce"`` (a teacher
            method without a teacher is an error).
        train_data: a DataLoader (used as given: its batch size, order and transforms, read
            afresh every epoch), a torch Dataset (batched at ``batch_size``, read every
            epoch) or ``(x, y)`` tensors or NumPy arrays (held in memory, batched on the device).
        test_data, val_data: the same forms, read once into memory.
            Labels are class indices; exactly one-hot labels are converted (argmax).
        method: a method name, ``{"name": ..., settings}`` or a list of terms (default
            ``"kd"`` with a teacher); feature methods on your own models need
            ``student_layers``/``teacher_layers``.
        num_classes: the label space (default: the student's output width).
        epochs, batch_size, **train_settings: the train section (``lr``, ``optimizer``,
            ``schedule``, ``seed``, ``device``, ``max_steps``...; see ``TrainConfig``); an
            unknown keyword is an error naming it.
        run_dir: where checkpoints and ``metrics.jsonl`` go (default ``runs/api-<time>``).
        quiet: print nothing (``log`` receives the lines otherwise; default ``print``).
        task: the kind of run (``"causal-lm"``...), for a config that does not say
            ``task:`` itself; the object form trains image classifiers.

    Returns:
        ``{"final": {"test": {...}}, "best": ..., "teacher": {...}, "run_dir", ...}``; the
        object form adds ``"distiller"`` (student + terms).
    """
    say = _quiet if quiet else (log or print)
    if config is not None:
        if student is not None or teacher is not None or train_data is not None:
            raise ConfigError("Give either a config or objects (student, teacher, data), not both.")
        if task is not None:
            overrides = [f"task={task}", *overrides]
        if isinstance(config, RunConfig):
            cfg = load_config(None, list(overrides), base=config.model_dump(mode="json")) if overrides else config
        elif isinstance(config, dict):
            cfg = load_config(None, list(overrides), base=config)
        else:
            cfg = load_config(config, list(overrides))
        if quiet:
            cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"progress": False})})
        return task_named(cfg.task).run(cfg, run_dir=run_dir, log=say)  # the task's own run
    if task is not None and task != DEFAULT_TASK:
        raise ConfigError(f"task {task!r}: give a config (a dict or a YAML path); objects train image classifiers.")
    return _train_objects(student, teacher, train_data, test_data, val_data, method, num_classes, epochs,
                          batch_size, run_dir, say, quiet, train_settings)


def _train_objects(student, teacher, train_data, test_data, val_data, method, num_classes, epochs, batch_size,
                   run_dir, say, quiet, settings) -> dict[str, Any]:
    if not isinstance(student, nn.Module):
        raise ConfigError("kdistill.train needs a config, or a student nn.Module and train_data.")
    if train_data is None or test_data is None:
        raise ConfigError("kdistill.train with objects needs train_data and test_data.")
    if method is None and teacher is None:
        raise ConfigError("kdistill.train got no teacher: pass teacher=..., or method='ce' to train the student "
                          "on the labels alone.")
    cfg_train = _train_config(epochs, quiet, settings)
    train_set = _train_set(train_data, batch_size)
    k = _class_count(student, teacher, train_set.example(2), num_classes)
    train_set.num_classes = k
    evals = {"test": as_dataset(test_data, "test_data", k)}
    if val_data is not None:
        evals["val"] = as_dataset(val_data, "val_data", k)
    data = _checked_splits(train_set, evals, k)
    distiller, method = _distiller(method or "kd", student, teacher, data)
    run_dir = Path(run_dir or Path("runs") / time.strftime("api-%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    teacher_logits, teacher_metrics = None, {}
    if teacher is not None:
        device = resolve_device(cfg_train.device)
        teacher.eval()
        teacher_logits = {n: predict_logits(teacher, ds, 1024, device) for n, ds in evals.items()}
        teacher_metrics = {n: classification_metrics(teacher_logits[n], ds.labels()) for n, ds in evals.items()}
        say(f"Teacher test accuracy {teacher_metrics['test']['acc']:.4f}.")
    trainer = Trainer(distiller, train_set, evals, cfg_train, run_dir, batch_size, 1024, Augment(), teacher_logits,
                      say, hparams={"train": cfg_train.model_dump(mode="json"), "method": method})
    res = trainer.fit()
    results = {"name": run_dir.name, "method": [f"{w:g}*{t.name}" for w, t in zip(distiller.weights, distiller.terms)],
               "teacher": {"metrics": teacher_metrics} if teacher is not None else {}, **res,
               "dataset": {"train": len(train_set), "test": len(evals["test"]), "num_classes": k,
                           "batch_size": trainer.loader.batch_size}}
    write_json(run_dir / "results.json", results)
    return results | {"run_dir": str(run_dir), "distiller": distiller}


def _checked_splits(train_set: Dataset, evals: dict[str, ArrayDataset], k: int) -> DataSplits:
    """Shapes and labels of every split against the label space, before training (a
    streamed training set through its first batch; its later batches are checked as read)."""
    for ds in evals.values():
        ds.validate()
    probe = train_set
    if not train_set.resident:
        first = train_set.take(torch.arange(min(8, len(train_set))))
        probe = ArrayDataset(first["x"], first["y"], k, "train_data")
    check_splits(DataSplits(probe, evals["test"], evals.get("val")))
    return DataSplits(train_set, evals["test"], evals.get("val"))


def _distiller(method: Any, student: nn.Module, teacher: nn.Module | None, data: DataSplits):
    """The distiller for ``method``, every term checked once against the real networks (on
    copies: the student trains from its own start)."""
    check_model(student, data, "student")
    if teacher is not None:
        check_model(teacher, data, "teacher")
    if isinstance(method, str):
        method = {"name": method}
    check_method(method, copy.deepcopy(student), copy.deepcopy(teacher) if teacher is not None else None, data.train)
    method = with_num_data(method, len(data.train))
    example = data.train.example(8)
    m = method if isinstance(method, list) else dict(method)
    distiller = (create(m, student, teacher, example=example) if isinstance(m, list)
                 else create(m.pop("name", "kd"), student, teacher, example=example, **m))
    needs = [t.name for t in distiller.terms if getattr(t, "needs_index", False)]
    if needs and not getattr(data.train, "carries_index", True):
        raise ConfigError(f"{', '.join(needs)} keys its memory by sample index, which a DataLoader's batches do not "
                          "carry: have it yield (x, y, index), or give train_data as a Dataset or tensors.")
    return distiller, method
