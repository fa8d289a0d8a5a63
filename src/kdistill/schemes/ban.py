"""Born-again networks: generations of one architecture, each taught by the previous.

Furlanello et al. (2018), "Born Again Neural Networks", arXiv:1805.04770 (ICML 2018).
Generation 0 is trained from scratch; generation ``k`` has the same architecture and learns
from generation ``k-1`` with the run's method (the paper trains born-again students on the
teacher's outputs alone: ``method: {name: kd, temperature: 1, alpha: 1.0}``, see
``examples/scheme_ban.yaml``). The paper's BAN ensemble averages the predictions of the
born-again generations 1..k; it is reported as ``ensemble``.

Each generation starts from its own random initialisation (seed ``train.seed + 1000*k``),
so generations differ in their start as well as their teacher. Folders: ``gen<k>/``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ..config import TeacherConfig
from ..runs import build_model
from ._common import ModelSpec, SchemeContext, as_model, deployable, evaluate_ensemble, model_path, summary
from ._registry import Scheme, SchemeConfig, register_scheme


@register_scheme("ban")
class BornAgain(Scheme):
    class Config(SchemeConfig):
        """Settings.

        Attributes:
            generations: born-again generations after the first (the paper reports up to 3).
            model: the architecture (default: the run's student).
        """

        generations: Annotated[int, Field(ge=1, le=50)] = 2
        model: ModelSpec | None = None

    def run(self, ctx: SchemeContext, s: Config) -> dict:
        spec = as_model(s.model) if s.model is not None else ctx.cfg.student
        stages, gens = {}, []
        for k in range(s.generations + 1):
            init = ctx.init_checkpoint(spec, ctx.cfg.train.seed + 1000 * k, f"gen{k}")
            if k == 0:
                res = ctx.run_step("gen0", init, train=ctx.scratch_train())
            else:
                teacher = TeacherConfig(model=spec.model, kwargs=spec.kwargs, checkpoint=model_path(gens[-1]))
                res = ctx.run_step(f"gen{k}", init, teacher)
            gens.append(res)
            stages[f"gen{k}"] = summary(res)

        born = [
            build_model(spec.model, spec.kwargs, ctx.data, model_path(g), ctx.trust, "generation")
            for g in gens[1:]
        ]
        stages["ensemble"] = evaluate_ensemble(ctx, born, "mean_prob", [model_path(g) for g in gens[1:]],
                                               f"generations 1..{s.generations}")
        return {"stages": stages, **deployable(gens[-1])}
