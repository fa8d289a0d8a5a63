"""What every scheme shares: its context, steps run as normal runs, and model folders.

A scheme's *step* is one of its trainings (a generation, a teacher in a chain, a member);
its results.json keeps the historical key ``stages`` for them, and ``stage`` elsewhere means
a network's depth stage."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ModelConfig, RunConfig, TeacherConfig, TrainConfig, validate_config
from ..data import Augment, Dataset, DataSplits
from ..engine.checkpoint import state_dict_tensors
from ..engine.trainer import Trainer
from ..errors import ConfigError
from ..methods import Distiller
from ..metrics import classification_metrics, predict_logits
from ..runs import (
    build_model,
    model_record,
    prepare_data,
    run_experiment,
    save_model,
    sync_processes,
    write_json,
)

#: a model in scheme settings: a zoo name or ``{model, kwargs, checkpoint}``
ModelSpec = str | ModelConfig


def as_model(spec: ModelSpec) -> ModelConfig:
    return ModelConfig(model=spec) if isinstance(spec, str) else spec


@dataclass
class SchemeContext:
    """The run a scheme writes into, and how."""

    cfg: RunConfig
    run_dir: Path
    resume: bool = False
    log: Callable[[str], None] = print
    trust: bool = False
    _data: DataSplits | None = field(default=None, repr=False)

    @property
    def data(self) -> DataSplits:
        """The run's data (loaded once, as every step's run loads it)."""
        if self._data is None:
            self._data = prepare_data(self.cfg)
        return self._data

    def scratch_train(self) -> TrainConfig:
        """Train settings of networks trained from scratch: ``teacher.train`` over ``train``."""
        return self.cfg.teacher_train() if self.cfg.teacher is not None else self.cfg.train

    def finished(self, name: str) -> dict[str, Any] | None:
        """A step's results when ``--resume`` finds it finished, else None."""
        path = self.run_dir / name / "results.json"
        if self.resume and path.is_file():
            try:
                out = json.loads(path.read_text())
            except (ValueError, RecursionError):
                return None
            if not isinstance(out, dict):
                return None
            self.log(f"Stage {name}: finished earlier, reusing {path.parent}.")
            return out | {"run_dir": str(path.parent)}
        return None

    def run_step(
        self,
        name: str,
        student: ModelConfig,
        teacher: TeacherConfig | None = None,
        method: dict | list | None = None,
        train: TrainConfig | None = None,
        transfer: dict | None = None,
    ) -> dict[str, Any]:
        """Run one step as a normal run (``run_experiment``) in ``run_dir/name``.

        Without a teacher the step trains ``student`` from scratch with cross-entropy.
        """
        done = self.finished(name)
        if done is not None:
            return done
        raw = self.cfg.model_dump(mode="json")
        raw["scheme"] = None
        raw["student"] = student.model_dump(mode="json")
        raw["teacher"] = teacher.model_dump(mode="json") if teacher is not None else None
        if teacher is None:
            raw["method"] = {"name": "ce"}
        else:
            raw["method"] = self.cfg.method if method is None else method
        raw["data"]["transfer"] = transfer
        raw["output"] = {"dir": str(self.run_dir), "name": name}
        if train is not None:
            raw["train"] = train.model_dump(mode="json")
        self.log(
            f"Stage {name}: {student.model}"
            + (f" taught by {teacher_label(teacher)}" if teacher else " from scratch")
        )
        return run_experiment(
            validate_config(raw),
            run_dir=self.run_dir / name,
            resume=self.resume,
            log=self.log,
            trust=self.trust,
        )

    def init_checkpoint(self, spec: ModelConfig, seed: int, name: str) -> ModelConfig:
        """``spec`` with a checkpoint of fresh weights drawn with ``seed``.

        Networks that should differ only in their initialisation (Hinton's ensemble, BAN
        generations) start from these files, so data order and subsets stay the run's.
        """
        if spec.checkpoint is not None:
            return spec
        path = self.run_dir / "init" / f"{name}.safetensors"
        if not path.is_file():
            torch.manual_seed(seed)
            model = build_model(spec.model, spec.kwargs, self.data, None, self.trust, name)
            from safetensors.torch import save_file

            path.parent.mkdir(parents=True, exist_ok=True)
            # every process of a multi-process run draws the same weights; each writes its
            # own temporary file and renames it, so a reader never sees half a file
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            save_file(state_dict_tensors(model), str(tmp))
            os.replace(tmp, path)
        return spec.model_copy(update={"checkpoint": str(path)})

    def eval_sets(self) -> dict:
        d = self.data
        return {"test": d.test} | ({"val": d.val} if d.val is not None else {})

    def fit(
        self,
        distiller: Distiller,
        name: str,
        train: TrainConfig | None = None,
        train_data: Dataset | None = None,
        eval_sets: dict | None = None,
    ) -> dict[str, Any]:
        """Train a scheme's own distiller (peer group, branches, exits) in ``run_dir/name``."""
        cfg = self.cfg
        sub = self.run_dir / name
        sub.mkdir(parents=True, exist_ok=True)
        aug = Augment(cfg.data.augment.shift, cfg.data.augment.flip)
        trainer = Trainer(
            distiller,
            train_data or self.data.train,
            eval_sets or self.eval_sets(),
            train or cfg.train,
            sub,
            cfg.data.batch_size,
            cfg.data.eval_batch_size,
            aug,
            None,
            self.log,
            role=name,
        )
        return trainer.fit(resume=self.resume)

    def evaluate(
        self, model: nn.Module | Callable[[Tensor], Tensor], teacher_logits: dict | None = None
    ) -> dict:
        """Metrics of ``model`` on every eval set (``model`` maps inputs to logits)."""
        out = {}
        for split, ds in self.eval_sets().items():
            logits = predict_logits(
                model,
                ds,
                self.cfg.data.eval_batch_size,
                None if isinstance(model, nn.Module) else torch.device("cpu"),
            )
            out[split] = classification_metrics(logits, ds.labels(), (teacher_logits or {}).get(split))
        return out

    def save_model_folder(
        self, name: str, model: nn.Module, spec: ModelConfig, extra: dict
    ) -> dict[str, Any]:
        """``run_dir/name`` with ``model.safetensors`` + ``model.json`` (the plain
        architecture ``spec``) and a ``results.json``; returns the results."""
        sub = self.run_dir / name
        sub.mkdir(parents=True, exist_ok=True)
        record = model_record(model, spec.model, spec.kwargs, self.data)
        save_model(sub, model.cpu(), record)
        results = {"name": name, "student": record, **extra}
        write_json(sub / "results.json", results)
        sync_processes()
        return results | {"run_dir": str(sub)}


def safe_name(model: str) -> str:
    """A model name usable in a folder name (``timm:resnet18`` -> ``timm_resnet18``)."""
    return model.replace(":", "_").replace("/", "_")


def teacher_label(t: TeacherConfig) -> str:
    if t.ensemble:
        return f"an ensemble of {len(t.ensemble)} ({t.combine})"
    return f"{t.model} ({t.checkpoint})" if t.checkpoint else str(t.model)


def model_path(stage: dict[str, Any]) -> str:
    """The deployable weights of a finished step."""
    path = Path(stage["run_dir"]) / "model.safetensors"
    if not path.is_file():
        raise ConfigError(
            f"Stage folder {stage['run_dir']} has no model.safetensors; rerun it without --resume."
        )
    return str(path)


def summary(stage: dict[str, Any]) -> dict[str, Any]:
    """One line of the top-level report for a step: where it is and its test accuracy."""
    fin = stage.get("final", {}).get("test", {})
    best = stage.get("best", {}).get("test", {})
    s = stage.get("student", {})
    return {
        "dir": Path(stage["run_dir"]).name,
        "model": s.get("model"),
        "params": s.get("params"),
        "test_acc": fin.get("acc"),
        "best_test_acc": best.get("acc"),
        "test_ece": fin.get("ece"),
    }


def deployable(stage: dict[str, Any]) -> dict[str, Any]:
    """The keys of the deployed step that ``kdistill train`` prints (student, teacher, final)."""
    return {k: stage[k] for k in ("student", "teacher", "final", "best") if k in stage}


def evaluate_ensemble(ctx: SchemeContext, models: list[nn.Module], combine: str, member_paths: list[str],
                      label: str) -> dict[str, Any]:
    """Evaluate ``models`` combined as one teacher, write ``ensemble/results.json``, and
    return the stage's summary row (shared by the ensemble and born-again schemes)."""
    from ..teachers import EnsembleTeacher

    ens = EnsembleTeacher(models, combine)
    metrics = ctx.evaluate(lambda x: ens({"x": x}).logits)
    ens_dir = ctx.run_dir / "ensemble"
    ens_dir.mkdir(parents=True, exist_ok=True)
    write_json(ens_dir / "results.json",
               {"name": "ensemble", "combine": combine, "members": member_paths, "final": metrics})
    return {"dir": "ensemble", "model": label, "test_acc": metrics["test"]["acc"],
            "test_ece": metrics["test"]["ece"]}


def save_members(ctx: SchemeContext, members: list[tuple[str, nn.Module, ModelConfig]], stages: dict[str, Any],
                 extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Evaluate and save each ``(name, model, spec)`` of a multi-network scheme (DML peers,
    ONE branches) as its own run folder, add a row per member to ``stages``, and return the
    saved records in order."""
    saved = []
    for name, model, spec in members:
        res = ctx.save_model_folder(name, model, spec, {"final": ctx.evaluate(model), **(extra or {})})
        saved.append(res)
        stages[name.split("-")[0]] = {"dir": name, "model": spec.model, "params": res["student"]["params"],
                                      "test_acc": res["final"]["test"]["acc"]}
    return saved
