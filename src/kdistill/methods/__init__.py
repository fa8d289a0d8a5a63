"""Distillation methods: one file per method, each a registered loss term."""

from . import ab, at, cc, ce, crd, dist, dkd, fitnet, fsp, ft, kd, nst, pkt, reviewkd, rkd, sp, vid  # noqa: F401  (register)  # noqa: F401  (register)  # noqa: F401  (register)
from . import forward_kl, gkd, reverse_kl, skew_kl, skew_reverse_kl, tvd  # noqa: F401  (register: token-level)
from ._base import Context, Distiller, Method
from ._registry import METHODS, build_term, create, register_method

__all__ = ["METHODS", "Context", "Distiller", "Method", "build_term", "create", "register_method"]
