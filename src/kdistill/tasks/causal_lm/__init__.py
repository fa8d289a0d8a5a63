"""The ``causal-lm`` task: distilling causal language models (Hugging Face models from
local folders or in-process configs, text from local files, token-level, sequence-level and
on-policy KD). Its config is :class:`LMRunConfig`; its run, check and tools are the modules
beside this one; its building blocks are :mod:`kdistill.lm`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...task import Headline, Task, register_task
from .config import TASK, LMRunConfig


@register_task(TASK)
class CausalLMTask(Task):
    """Runs compared on validation perplexity (lower is better)."""

    config = LMRunConfig
    headline = Headline("val", "ppl", "ppl", "validation perplexity", higher_is_better=False, percent=False,
                        selects_best=False)
    student_folder = "student"
    hint = ("A causal-LM run's student is the Hugging Face folder RUN/student: `kdistill generate RUN --prompt TEXT`, "
            "`kdistill export RUN` (a checked HF folder), `kdistill profile RUN`, `kdistill eval RUN`.")

    def check(self, cfg, log, trust=False):
        from .check import check_lm

        check_lm(cfg, log, trust)

    def check_resume(self, cfg, run_dir=None):
        from ...errors import ConfigError
        from .run import run_dir_for

        path = run_dir_for(cfg, run_dir)
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"--resume: {path} holds no run, so there is nothing to resume. Drop --resume to "
                              "start a new run (or set output.name / --run-dir to the run's folder).")
        return path

    def run(self, cfg, run_dir=None, resume=False, log=print, trust=False):
        from .run import run_lm

        return run_lm(cfg, run_dir=run_dir, resume=resume, log=log)

    def summary(self, result):
        rows = []
        t = result.get("teacher") or {}
        if t.get("val"):
            rows.append(["teacher", f"{t['params']:,}", f"{t['val']['ppl']:.3f}", f"{t['val']['acc']:.4f}", ""])
        fin = result.get("final", {}).get("val", {})
        if fin:
            agree = f"{fin['agreement']:.4f}" if "agreement" in fin else ""
            rows.append(["student", f"{result['student']['params']:,}", f"{fin['ppl']:.3f}", f"{fin['acc']:.4f}", agree])
        return (f"causal-LM run ({result['regime']})", ["model", "params", "val ppl", "val token acc", "agreement"],
                rows)

    def evaluate(self, run_dir, trust_code=False, teacher: str | None = None):
        from .run import evaluate_lm_run

        return evaluate_lm_run(run_dir, teacher)

    def export(self, run_dir, out=None, **options):
        from .tools import export_lm

        return export_lm(Path(run_dir), out, **options)

    def profile(self, run_dir, **options):
        from .tools import profile_lm

        return profile_lm(Path(run_dir), **options)

    def generate(self, run_dir, prompts, **options):
        from .tools import generate_lm

        return generate_lm(Path(run_dir), prompts, **options)

    def report_blocks(self, records):
        from .tools import generations_table

        return generations_table(records)

    # compare / sweep: the first cell that trains the teacher shares it as hf:CELL/teacher
    def teacher_key(self, cfg, mode):
        t = cfg.teacher
        if t is None or t.model.startswith("hf:"):
            return None
        train = cfg.teacher_train().model_dump()
        if mode == "shared":
            train.pop("seed")
        return json.dumps([t.model_dump(), train, cfg.data.model_dump(), cfg.tokenizer], sort_keys=True, default=str)

    def trained_teacher(self, cell_dir, cfg):
        from .run import teacher_folder

        folder = teacher_folder(Path(cell_dir))
        return [f"hf:{folder.resolve()}"] if (folder / "config.json").is_file() else None

    def reuse_teacher(self, cfg, found):
        raw: dict[str, Any] = cfg.model_dump(mode="json")
        raw["teacher"] = {"model": found[0]}
        return LMRunConfig.model_validate(raw)


__all__ = ["CausalLMTask", "LMRunConfig"]
