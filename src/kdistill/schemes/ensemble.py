"""Hinton's ensemble: N teachers that differ only in their initialisation, combined, then
distilled into the student.

Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network",
arXiv:1503.02531, section 4.1 (speech): ten models "that were identical except for their
random initial parameter values", whose averaged predictions are distilled into one model of
the same size. Combine modes are :class:`~kdistill.teachers.EnsembleTeacher`'s: mean of
probabilities (the paper's), mean of logits, or the normalised geometric mean.

Folders: ``member<i>/`` (each member trained from scratch), ``ensemble/`` (the combined
teacher's metrics), ``student/`` (the distilled student: the deployable result).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ..config import ModelConfig, TeacherConfig
from ..errors import ConfigError
from ..runs import build_model
from ._common import ModelSpec, SchemeContext, as_model, deployable, evaluate_ensemble, model_path, summary
from ._registry import Scheme, SchemeConfig, register_scheme


@register_scheme("ensemble")
class EnsembleScheme(Scheme):
    class Config(SchemeConfig):
        """Settings.

        Attributes:
            members: number of teachers (Hinton et al. used 10; 3 keeps runs short).
            teacher: the members' architecture (default: the run's ``teacher.model``).
            combine: ``mean_prob`` (the paper's), ``mean_logit`` or ``geometric``.
            seed_stride: member ``i`` is initialised with seed ``train.seed + seed_stride * (i + 1)``;
                data order and subsets stay the run's, so members differ only in their start.
        """

        members: Annotated[int, Field(ge=2, le=100)] = 3
        teacher: ModelSpec | None = None
        combine: Literal["mean_prob", "mean_logit", "geometric"] = "mean_prob"
        seed_stride: Annotated[int, Field(ge=1)] = 1000

    def run(self, ctx: SchemeContext, s: Config) -> dict:
        spec = as_model(s.teacher) if s.teacher is not None else _run_teacher(ctx)
        stages, members = {}, []
        for i in range(s.members):
            init = ctx.init_checkpoint(spec, ctx.cfg.train.seed + s.seed_stride * (i + 1), f"member{i}")
            res = ctx.run_step(f"member{i}", init, train=ctx.scratch_train())
            stages[f"member{i}"] = summary(res)
            members.append(spec.model_copy(update={"checkpoint": model_path(res)}))
        teacher = TeacherConfig(ensemble=members, combine=s.combine)

        models = [build_model(m.model, m.kwargs, ctx.data, m.checkpoint, ctx.trust, "member") for m in members]
        stages["ensemble"] = evaluate_ensemble(ctx, models, s.combine, [m.checkpoint for m in members],
                                               f"{s.members} x {spec.model}")

        student = ctx.run_step("student", ctx.cfg.student, teacher)
        stages["student"] = summary(student)
        return {"stages": stages, **deployable(student)}


def _run_teacher(ctx: SchemeContext) -> ModelConfig:
    t = ctx.cfg.teacher
    if t is None or t.model is None:
        raise ConfigError(
            "The ensemble scheme needs the members' architecture: set scheme.teacher or teacher.model."
        )
    return ModelConfig(model=t.model, kwargs=t.kwargs)
