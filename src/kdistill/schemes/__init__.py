"""Distillation schemes: multi-step or multi-network training (``scheme:`` in a config).

``run_scheme(cfg)`` dispatches on ``cfg.scheme["name"]``; ``kdistill list schemes`` prints
the registry. Each scheme writes one run folder with a subfolder per step or model (each
with its ``results.json``) and a top-level ``results.json`` reporting every step.

* ``ensemble`` - N teachers differing only in initialisation, combined, distilled (Hinton et al. 2015)
* ``takd`` - teacher -> assistant(s) -> student (Mirzadeh et al. 2019)
* ``ban`` - born-again generations of one architecture (Furlanello et al. 2018)
* ``dml`` - deep mutual learning of peers (Zhang et al. 2018)
* ``one`` - on-the-fly native ensemble of branches (Lan et al. 2018)
* ``byot`` - self-distillation into early exits (Zhang et al. 2019)
* ``specialists`` - generalist + specialists on confusable classes (Hinton et al. 2015, sec. 5)
* ``transfer`` - transfer sets of teacher-labelled pseudo-data, MUNGE (Bucilua et al. 2006)
"""

from . import ban, byot, dml, ensemble, one, specialists, takd, transfer  # noqa: F401  (register)
from ._common import ModelSpec, SchemeContext, as_model, deployable, model_path, summary
from ._registry import SCHEMES, Scheme, SchemeConfig, check_run, parse_settings, register_scheme, run_scheme

__all__ = [
    "SCHEMES",
    "ModelSpec",
    "Scheme",
    "SchemeConfig",
    "SchemeContext",
    "as_model",
    "check_run",
    "deployable",
    "model_path",
    "parse_settings",
    "register_scheme",
    "run_scheme",
    "summary",
]
