"""Whole runs: building a run from its config (data, models, teacher), the run folder,
rebuilding saved models, one experiment end to end, caching a config's teacher, and grids
of runs. Above the engine (which trains one model); below the CLI, reports and schemes."""

from . import default_teacher  # noqa: F401  (registers the default teacher kind)
from .build import (
    build_model,
    check_model,
    load_transfer,
    model_record,
    named_models,
    prepare_data,
    teacher_from_checkpoints,
    with_num_data,
)
from .caching import cache_from_config
from .experiment import TeacherContext, cpu_latency, ensure_teacher, run_experiment, teacher_logits_for, train_model
from .folder import check_resumable, is_main_process, open_run_dir, run_dir_for, save_model, sync_processes, write_json
from .preflight import Preflight, preflight
from .saved import load_saved, model_from_record, read_model_record, rebuild

__all__ = [
    "TeacherContext",
    "build_model",
    "cache_from_config",
    "check_model",
    "check_resumable",
    "cpu_latency",
    "ensure_teacher",
    "is_main_process",
    "load_saved",
    "load_transfer",
    "model_from_record",
    "model_record",
    "named_models",
    "open_run_dir",
    "Preflight",
    "preflight",
    "prepare_data",
    "read_model_record",
    "rebuild",
    "run_dir_for",
    "run_experiment",
    "save_model",
    "sync_processes",
    "teacher_from_checkpoints",
    "teacher_logits_for",
    "train_model",
    "with_num_data",
    "write_json",
]
