"""Distillation methods: one file per method, each a registered loss term."""

from . import ab, at, cc, ce, crd, dist, dkd, fitnet, fsp, ft, kd, nst, pkt, reviewkd, rkd, sp, vid  # noqa: F401  (register)
from ._base import Context, Distiller, FirstPhase, Method, as_teacher
from ._registry import METHODS, build_term, create, register_method

__all__ = ["METHODS", "Context", "Distiller", "FirstPhase", "Method", "as_teacher", "build_term", "create", "register_method"]
