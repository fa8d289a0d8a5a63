"""Distillation methods: one file per method, each a registered loss term."""

from . import (  # noqa: F401  (register)  # noqa: F401  (register)  # noqa: F401  (register)  # noqa: F401  (register: token-level)
    ab,
    at,
    cc,
    ce,
    crd,
    dist,
    dkd,
    fitnet,
    forward_kl,
    fsp,
    ft,
    gkd,
    kd,
    nst,
    pkt,
    reverse_kl,
    reviewkd,
    rkd,
    skew_kl,
    skew_reverse_kl,
    sp,
    tvd,
    vid,
)
from ._base import Context, Distiller, Method
from ._registry import METHODS, build_term, create, register_method

__all__ = ["METHODS", "Context", "Distiller", "Method", "build_term", "create", "register_method"]
