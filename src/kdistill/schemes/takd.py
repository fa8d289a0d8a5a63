"""Teacher-assistant KD: teacher -> assistant(s) -> student.

Mirzadeh et al. (2019), "Improved Knowledge Distillation via Teacher Assistant",
arXiv:1902.03393 (AAAI 2020). When the gap between teacher and student is large, distilling
through an intermediate-size assistant helps; their study distils plain CNNs of 10, 8, 6
and 4 conv layers into a 2-layer student (the ``convnet`` zoo), where the student taught by
a 10-layer teacher does better through an assistant than directly.

``scheme.chain`` lists models from largest to smallest; stage ``i`` trains ``chain[i]``
with the run's method (KD by default), taught by stage ``i-1``'s trained model; stage 0 is
trained from scratch unless it has a checkpoint. Folders: ``stage<i>-<model>/``.

:func:`run_study` runs the paper's study: the student's accuracy for each teacher size,
directly and through an assistant (``kdistill takd-study``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import field_validator

from ..config import ModelConfig, RunConfig, TeacherConfig
from ..errors import ConfigError
from ..runs import write_json
from ._common import ModelSpec, SchemeContext, as_model, deployable, model_path, safe_name, summary
from ._registry import Scheme, SchemeConfig, register_scheme


def stage_name(i: int, spec: ModelConfig) -> str:
    return f"stage{i}-{safe_name(spec.model)}"


def run_chain(ctx: SchemeContext, chain: list[ModelConfig], prefix: str = "") -> list[dict[str, Any]]:
    """Train ``chain[0] -> chain[1] -> ...``; each stage is taught by the previous one."""
    results: list[dict[str, Any]] = []
    for i, spec in enumerate(chain):
        name = prefix + stage_name(i, spec)
        if i == 0:
            if spec.checkpoint is not None:
                results.append(_given(ctx, name, spec))
                continue
            res = ctx.run_step(name, spec, train=ctx.scratch_train())
        else:
            prev = chain[i - 1]
            teacher = TeacherConfig(model=prev.model, kwargs=prev.kwargs, checkpoint=model_path(results[-1]))
            res = ctx.run_step(name, spec, teacher)
        results.append(res)
    return results


def _given(ctx: SchemeContext, name: str, spec: ModelConfig) -> dict[str, Any]:
    """A chain head with a checkpoint: evaluated, copied into its stage folder."""
    from ..runs import build_model

    done = ctx.finished(name)
    if done is not None:
        return done
    model = build_model(spec.model, spec.kwargs, ctx.data, spec.checkpoint, ctx.trust, f"{name} model")
    return ctx.save_model_folder(
        name, model, spec, {"final": ctx.evaluate(model), "checkpoint": spec.checkpoint}
    )


@register_scheme("takd")
class TAKD(Scheme):
    class Config(SchemeConfig):
        """Settings.

        Attributes:
            chain: models from largest to smallest (at least two), each a zoo name or
                ``{model, kwargs, checkpoint}``; e.g. ``[convnet10, convnet4, convnet2]``.
            study_teachers: teacher models of the study (``kdistill takd-study``; the
                paper's 4, 6, 8 and 10-layer CNNs by default); unused by ``train``.
        """

        chain: list[ModelSpec]
        study_teachers: list[str] | None = None

        @field_validator("chain")
        @classmethod
        def _two(cls, v):
            if len(v) < 2:
                raise ValueError(
                    "a TAKD chain needs at least two models (teacher ... student), "
                    f"got {len(v)}; e.g. [convnet10, convnet4, convnet2]"
                )
            return v

    def run(self, ctx: SchemeContext, s: Config) -> dict:
        chain = [as_model(m) for m in s.chain]
        results = run_chain(ctx, chain)
        return {"stages": {Path(r["run_dir"]).name: summary(r) for r in results}, **deployable(results[-1])}


def run_study(
    cfg: RunConfig,
    run_dir: str | Path,
    teachers: list[str],
    student: str,
    assistant: str,
    resume: bool = False,
    log=print,
    trust: bool = False,
) -> dict[str, Any]:
    """The TAKD paper's study: student accuracy per teacher size, with and without assistant.

    Each teacher is trained once (``teacher-<name>/``); the student is distilled from it
    directly (``direct-<name>/``) and through ``assistant`` (``ta-<name>/``, then
    ``via-ta-<name>/``) when the teacher is larger than the assistant (by parameters).
    Returns and writes ``study.json`` with one row per teacher.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = SchemeContext(cfg, run_dir, resume, log, trust)
    s_spec, a_spec = ModelConfig(model=student), ModelConfig(model=assistant)
    rows = []
    for t in teachers:
        t_spec = ModelConfig(model=t)
        teacher = ctx.run_step(f"teacher-{t}", t_spec, train=ctx.scratch_train())
        t_cfg = TeacherConfig(model=t, checkpoint=model_path(teacher))
        direct = ctx.run_step(f"direct-{t}", s_spec, t_cfg)
        row = {
            "teacher": t,
            "teacher_params": teacher["student"]["params"],
            "teacher_acc": teacher["final"]["test"]["acc"],
            "student_direct_acc": direct["final"]["test"]["acc"],
            "assistant": None,
            "assistant_acc": None,
            "student_via_assistant_acc": None,
        }
        if teacher["student"]["params"] > _params(ctx, a_spec) and t != assistant:
            ta = ctx.run_step(f"ta-{t}", a_spec, t_cfg)
            via = ctx.run_step(
                f"via-ta-{t}", s_spec, TeacherConfig(model=assistant, checkpoint=model_path(ta))
            )
            row.update(
                assistant=assistant,
                assistant_acc=ta["final"]["test"]["acc"],
                student_via_assistant_acc=via["final"]["test"]["acc"],
            )
        rows.append(row)
        log(
            f"teacher {t}: direct {row['student_direct_acc']:.4f}  "
            f"via assistant {row['student_via_assistant_acc']}"
        )
    out = {"student": student, "assistant": assistant, "rows": rows}
    write_json(run_dir / "study.json", out)
    return out


def _params(ctx: SchemeContext, spec: ModelConfig) -> int:
    from ..measure import count_params
    from ..runs import build_model

    return count_params(build_model(spec.model, spec.kwargs, ctx.data, None, ctx.trust, "assistant"))


def study_settings(cfg: RunConfig) -> dict[str, Any]:
    """The study's models from ``cfg.scheme`` (``chain`` = largest teacher, assistant, student
    and ``study_teachers``), with the paper's defaults."""
    sch = dict(cfg.scheme or {})
    chain = sch.get("chain") or ["convnet10", "convnet4", "convnet2"]
    names = [c if isinstance(c, str) else c.get("model") for c in chain]
    if len(names) < 3:
        raise ConfigError("The TAKD study needs scheme.chain = [largest teacher, assistant, student].")
    teachers = sch.get("study_teachers") or ["convnet4", "convnet6", "convnet8", "convnet10"]
    return {"teachers": list(teachers), "assistant": names[-2], "student": names[-1]}
