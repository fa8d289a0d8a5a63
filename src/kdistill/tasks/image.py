"""The ``image-classification`` task (the default): the zoo's networks on the dataset
sources' inputs, compared on test accuracy. Its run is :func:`kdistill.runs.run_experiment`
(or a scheme's, :func:`kdistill.schemes.run_scheme`); its tools are the whole-run tools
(:mod:`kdistill.evaluate`, :mod:`kdistill.export`, :mod:`kdistill.profile`)."""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..task import DEFAULT_TASK, Headline, Task, register_task


@register_task(DEFAULT_TASK)
class ImageClassification(Task):
    config = RunConfig
    headline = Headline()  # test top-1 accuracy, in percent
    calibration = True
    tools = frozenset({"quantize", "predict"})

    def check(self, cfg, log, trust=False):
        from ..schemes import check_run

        check_run(cfg, trust=trust, log=log)

    def check_resume(self, cfg, run_dir=None):
        from ..runs import check_resumable

        return check_resumable(cfg, run_dir)

    def run(self, cfg, run_dir=None, resume=False, log=print, trust=False):
        from ..runs import run_experiment
        from ..schemes import run_scheme

        if cfg.scheme:
            return run_scheme(cfg, run_dir=run_dir, resume=resume, log=log, trust=trust)
        return run_experiment(cfg, run_dir=run_dir, resume=resume, log=log, trust=trust)

    def summary(self, result):
        rows = []
        t = result.get("teacher") or {}
        if t.get("metrics"):
            m = t["metrics"]["test"]
            rows.append([f"teacher {t.get('model', '')}", f"{t.get('params', '')}", f"{m['acc']:.4f}", "", "",
                         f"{m['ece']:.4f}"])
        s = result.get("student", {})
        fin = result.get("final", {}).get("test", {})
        best = result.get("best", {}).get("test", {})
        if fin:
            rows.append([f"student {s.get('model', '')}", f"{s.get('params', '')}", f"{fin['acc']:.4f}",
                         f"{best.get('acc', float('nan')):.4f}", f"{fin.get('agreement', float('nan')):.4f}",
                         f"{fin['ece']:.4f}"])
        cols = ["model", "params", "test acc (last)", "test acc (best)", "agreement", "ECE"]
        return f"run {result.get('name', '')}", cols, rows

    def evaluate(self, run_dir, trust_code=False, **options):
        from ..evaluate import evaluate_run

        return evaluate_run(run_dir, trust_code=trust_code)

    def export(self, run_dir, out=None, **options):
        from ..export import export_run

        return export_run(run_dir, out=out, **options)

    def profile(self, run_dir, **options):
        from ..profile import profile_run

        return profile_run(run_dir, **options)

    # compare / sweep: the scratch cell of a seed trains the teacher the other cells reuse
    def teacher_key(self, cfg, mode):
        from ..runs.grid import image_teacher_key

        return image_teacher_key(cfg, mode)

    def trained_teacher(self, cell_dir: Path, cfg):
        from ..runs.grid import image_teacher_paths

        return image_teacher_paths(cell_dir, cfg)

    def reuse_teacher(self, cfg, found):
        from ..runs.grid import image_reuse_teacher

        return image_reuse_teacher(cfg, found)
