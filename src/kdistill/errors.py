"""User-facing errors.

Every mistake a user can make (bad config, missing file, wrong shapes) raises a
:class:`KdistillError`. The CLI prints its message as one paragraph and exits non-zero
without a traceback; library users catch it like any exception.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class KdistillError(Exception):
    """A mistake in the user's input, explained in words the user can act on."""

    exit_code = 2


class ConfigError(KdistillError):
    """The configuration is invalid."""


class DataError(KdistillError):
    """A dataset is missing, empty or malformed."""


class ShapeError(KdistillError):
    """Models, features or data do not fit together."""


class CheckpointError(KdistillError):
    """A checkpoint or model file cannot be loaded safely."""


class UntrustedCodeError(KdistillError):
    """A file (a run folder's ``model.json``, a config read from a run folder) names code
    outside the model zoo, and the user did not opt in with ``--trust-code``."""


class NonFiniteError(KdistillError):
    """Training produced NaN or Inf."""

    exit_code = 3


class Interrupted(KdistillError):
    """Training stopped on a signal after saving a checkpoint."""

    exit_code = 130


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The candidates most similar to ``name`` (best first)."""
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.4)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` or an empty string when nothing is close."""
    near = closest(name, candidates)
    return f" Did you mean {', '.join(repr(c) for c in near)}?" if near else ""
