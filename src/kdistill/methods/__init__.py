"""Distillation methods: one file per method, each a registered loss term."""

from . import ce, kd  # noqa: F401  (register)
from . import cc, crd, dist, dkd, pkt, reviewkd, sp, vid  # noqa: F401  (register)
from . import ab, at, fitnet, fsp, ft, nst, rkd  # noqa: F401  (register)
from ._base import Context, Distiller, Method
from ._registry import METHODS, build_term, create, register_method

__all__ = ["METHODS", "Context", "Distiller", "Method", "build_term", "create", "register_method"]
