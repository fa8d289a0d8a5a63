"""Distillation methods: one file per method, each a registered loss term."""

from . import (  # noqa: F401  (register every method)
    ab,
    at,
    cc,
    ce,
    crd,
    ctkd,
    dist,
    dist_plus,
    dkd,
    fitnet,
    fsp,
    ft,
    kd,
    mlkd,
    nst,
    pkt,
    reviewkd,
    rkd,
    skd,
    sp,
    vid,
)
from ._base import Context, Distiller, FirstPhase, Method, as_teacher
from ._registry import METHODS, build_term, create, register_method
from ._token import TokenTopK
from .deit import DeiT  # noqa: F401  (register)
from .forward_kl import ForwardKL  # noqa: F401  (register the token-level methods)
from .gkd import GKD  # noqa: F401
from .gold import GOLD  # noqa: F401
from .reverse_kl import ReverseKL  # noqa: F401
from .skew_kl import SkewKL  # noqa: F401
from .skew_reverse_kl import SkewReverseKL  # noqa: F401
from .tvd import TotalVariation  # noqa: F401
from .uld import ULD  # noqa: F401  (the cross-tokenizer methods)

__all__ = ["METHODS", "Context", "Distiller", "FirstPhase", "Method", "as_teacher", "build_term", "create", "register_method", "TokenTopK"]
