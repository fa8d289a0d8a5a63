"""See the result: grids of runs over seeds, their statistics, plots and reports.

* :func:`kdistill.report.compare.compare` / :func:`~kdistill.report.compare.sweep` run a grid (methods, configs or config values x seeds,
  plus a scratch student per seed) into one folder, resumably, and aggregate it.
* :func:`aggregate_dir` reads any folder of run folders into mean, std, 95% t-intervals and
  paired gains over the scratch student (:mod:`kdistill.report.tables`).
* :func:`build_report` writes ``report.md`` and a self-contained ``report.html`` with plots.

Use from Python::

    from kdistill.report import build_report
    from kdistill.report.compare import compare
    compare("examples/fashion_mnist_kd.yaml", methods=["kd", "at"], seeds=[0, 1, 2])
    build_report("runs/compare-fashion_mnist_kd")
"""

from .compare import run_grid
from .html import build_report
from .tables import aggregate_dir, paired_difference, summarize, t_quantile

__all__ = ["aggregate_dir", "build_report", "paired_difference", "run_grid", "summarize", "t_quantile"]
