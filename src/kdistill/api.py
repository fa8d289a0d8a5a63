"""The Python entry point of a whole training: :func:`train`.

Two ways in, one result:

* a **config** (a dict, a YAML path, or a :class:`~kdistill.config.RunConfig`): the same run
  as ``kdistill train CONFIG`` (teacher trained first if it has no checkpoint, schemes
  included), with the same run folder and ``results.json``;
* **objects**: your ``student`` and (trained) ``teacher`` modules and your data, as torch
  datasets, ``DataLoader``\\ s or ``(x, y)`` tensors. The data is read once into memory
  (kdistill's device-resident loader then shuffles, batches and augments it), every check
  of ``kdistill train --check`` runs first, and the student is trained in place.

Both return the run's results (``final``/``best`` metrics per split, ``teacher`` metrics,
``run_dir``); the object form adds the trained ``distiller``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import RunConfig, TrainConfig, load_config
from .data import ArrayDataset, DataSplits
from .errors import ConfigError, DataError
from .metrics import classification_metrics
from .runs.build import check_model
from .runs.folder import write_json
from .runs.preflight import check_method, check_splits
from .task import DEFAULT_TASK, task_named

DataLike = Any  # a torch Dataset, a DataLoader, an (x, y) pair of tensors, or an ArrayDataset


def _quiet(_line: str) -> None:
    pass


def _pairs(data: DataLike, what: str) -> tuple[Tensor, Tensor]:
    """``(x, y)`` tensors from any of the accepted data forms."""
    if isinstance(data, ArrayDataset):  # through the dataset protocol, like every consumer
        return data.take(torch.arange(len(data)))["x"], data.labels()
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return data[0], data[1]
    if isinstance(data, torch.utils.data.DataLoader):
        items: Iterable = data
        batched = True
    elif isinstance(data, torch.utils.data.Dataset) or hasattr(data, "__getitem__"):
        items, batched = (data[i] for i in range(len(data))), False
    else:
        raise ConfigError(f"{what}: give a torch Dataset, a DataLoader or an (x, y) pair of tensors, "
                          f"not {type(data).__name__}.")
    xs, ys = [], []
    for item in items:
        if isinstance(item, dict):
            x, y = item.get("x"), item.get("y")
        elif isinstance(item, (tuple, list)) and len(item) >= 2:
            x, y = item[0], item[1]
        else:
            raise DataError(f"{what}: each sample or batch must be (x, y) or a dict with 'x' and 'y'; "
                            f"got {type(item).__name__}.")
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        xs.append(x if batched else x.unsqueeze(0))
        ys.append(y.reshape(-1) if batched else y.reshape(1))
    if not xs:
        raise DataError(f"{what} is empty.")
    return torch.cat(xs), torch.cat(ys)


def as_dataset(data: DataLike, what: str, num_classes: int | None = None) -> ArrayDataset:
    """Any accepted data form as an in-memory :class:`~kdistill.data.ArrayDataset`."""
    x, y = _pairs(data, what)
    if y.is_floating_point():
        if not torch.equal(y, y.round()):
            raise DataError(f"{what}: labels must be class indices (integers), not {y.dtype} values.")
        y = y.long()
    k = int(num_classes if num_classes is not None else int(y.max()) + 1)
    return ArrayDataset(x.detach().cpu().float(), y.detach().cpu().long(), k, what)


def train(
    config: dict | str | Path | RunConfig | None = None,
    *,
    student: nn.Module | None = None,
    teacher: nn.Module | None = None,
    train_data: DataLike = None,
    test_data: DataLike = None,
    val_data: DataLike = None,
    method: str | dict | list = "kd",
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
        teacher: a trained network (frozen), or ``None`` with ``method="ce"``.
        train_data, test_data, val_data: torch Datasets, DataLoaders or ``(x, y)`` tensors.
        method: a method name (``"kd"``), ``{"name": ..., settings}`` or a list of terms;
            feature methods on your own models need ``student_layers``/``teacher_layers``.
        num_classes: the label space (default: the largest label + 1).
        epochs, batch_size, **train_settings: the train section (``lr``, ``optimizer``,
            ``schedule``, ``seed``, ``device``...; see ``TrainConfig``).
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
    from .data import Augment
    from .devices import resolve_device
    from .engine.trainer import Trainer
    from .methods import create
    from .runs.build import with_num_data

    if not isinstance(student, nn.Module):
        raise ConfigError("kdistill.train needs a config, or a student nn.Module and train_data.")
    if train_data is None or test_data is None:
        raise ConfigError("kdistill.train with objects needs train_data and test_data.")
    parts = {"train": train_data, "test": test_data} | ({"val": val_data} if val_data is not None else {})
    pairs = {k: _pairs(v, f"{k}_data") for k, v in parts.items()}
    k = num_classes or int(max(int(y.max()) for _, y in pairs.values())) + 1
    sets = {name: as_dataset(p, f"{name}_data", k) for name, p in pairs.items()}
    for ds in sets.values():
        ds.validate()
    data = DataSplits(sets["train"], sets["test"], sets.get("val"))
    check_splits(data)
    try:
        cfg_train = TrainConfig(epochs=epochs, **({"progress": False} if quiet else {}) | settings)
    except Exception as e:  # pydantic's ValidationError: name the bad setting
        raise ConfigError(f"kdistill.train settings: {str(e).splitlines()[0]} ({e.__class__.__name__}).") from None
    if cfg_train.epochs == 0:
        raise ConfigError("epochs is 0: nothing would be trained.")
    if isinstance(method, str):
        method = {"name": method}
    if teacher is None and method == {"name": "kd"}:
        method = {"name": "ce"}
    check_model(student, data, "student")
    if teacher is not None:
        check_model(teacher, data, "teacher")
    # every term against the real networks, once, on a copy: the student trains from its own start
    import copy

    check_method(method, copy.deepcopy(student), copy.deepcopy(teacher) if teacher is not None else None, data.train)
    method = with_num_data(method, len(data.train))
    example = data.train.example(8)
    m = method if isinstance(method, list) else dict(method)
    distiller = (create(m, student, teacher, example=example) if isinstance(m, list)
                 else create(m.pop("name", "kd"), student, teacher, example=example, **m))
    run_dir = Path(run_dir or Path("runs") / time.strftime("api-%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg_train.device)
    teacher_logits, teacher_metrics = None, {}
    evals = {"test": data.test} | ({"val": data.val} if data.val is not None else {})
    if teacher is not None:
        from .metrics import predict_logits

        teacher.eval()
        teacher_logits = {n: predict_logits(teacher, ds, 1024, device) for n, ds in evals.items()}
        teacher_metrics = {n: classification_metrics(teacher_logits[n], ds.labels()) for n, ds in evals.items()}
        say(f"Teacher test accuracy {teacher_metrics['test']['acc']:.4f}.")
    trainer = Trainer(distiller, data.train, evals, cfg_train, run_dir, batch_size, 1024, Augment(), teacher_logits,
                      say, hparams={"train": cfg_train.model_dump(mode="json"), "method": method})
    res = trainer.fit()
    results = {"name": run_dir.name, "method": [f"{w:g}*{t.name}" for w, t in zip(distiller.weights, distiller.terms)],
               "teacher": {"metrics": teacher_metrics} if teacher is not None else {}, **res,
               "dataset": {"train": len(data.train), "test": len(data.test), "num_classes": k}}
    write_json(run_dir / "results.json", results)
    return results | {"run_dir": str(run_dir), "distiller": distiller}
