"""The task contract: what kind of run a config is (``task:``), and everything that differs
between kinds of run behind one interface.

A task is a room in the one house: the config, the run folder, the CLI, compare/sweep and
the report are shared; a task brings what is its own. Implementations live in
:mod:`kdistill.tasks` (``image-classification``, ``causal-lm``), one file (or package) each,
registered with :func:`register_task`. Every caller dispatches through :data:`TASKS`; no
caller asks which task it holds.

This module sits low in the layers (just below ``config``), so ``config`` can pick a task's
config class and the readers (report, export, profile) can look a task up by name; the
implementations, high in the layers, import whatever they need inside their hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ._registry import Registry
from .errors import ConfigError

#: the task of a config without a ``task:`` key (and of run folders written before tasks)
DEFAULT_TASK = "image-classification"

Log = Callable[[str], None]


@dataclass(frozen=True)
class Headline:
    """The metric a task's runs are compared on: ``results[final][split][key]``, the
    metrics.jsonl column ``<split>_<key>`` per epoch, and the teacher's
    ``results[teacher][metrics][split][key]``."""

    split: str = "test"
    key: str = "acc"
    #: the column heading (``"acc"``, ``"ppl"``)
    label: str = "acc"
    #: in words, for legends and plot axes
    words: str = "test accuracy"
    higher_is_better: bool = True
    #: shown as a percentage (a fraction in [0, 1]); else as a plain number
    percent: bool = True
    #: the run's ``best`` epoch was selected on this metric; else ``best`` is read from the
    #: per-epoch rows (the causal-LM Trainer selects on token accuracy, not perplexity)
    selects_best: bool = True

    @property
    def column(self) -> str:
        return f"{self.split}_{self.key}"


class Task:
    """One kind of run. Subclass it, set ``config`` (the pydantic config class a document
    with ``task: <name>`` validates as; :class:`kdistill.config.RunConfig` or a subclass of
    it) and ``headline``, implement the hooks your runs need, and register it::

        @register_task("regression")
        class Regression(Task):
            config = RunConfig
            headline = Headline("test", "mse", "mse", "test MSE", higher_is_better=False, percent=False)
            def run(self, cfg, run_dir=None, resume=False, log=print, trust=False): ...

    Hooks a task does not implement say so in one ``error:`` line (:meth:`unsupported`).
    """

    name: ClassVar[str] = ""
    config: ClassVar[type] = object
    headline: ClassVar[Headline] = Headline()
    #: the folder under a run that holds the trained student (``kdistill generate``, ``export``)
    student_folder: ClassVar[str] = "."
    #: the report rebuilds networks for a reliability diagram and per-class accuracy
    calibration: ClassVar[bool] = False
    #: the whole-run tools written for this task's saved models besides the hooks below
    #: (``quantize``, ``predict``: image classifiers)
    tools: ClassVar[frozenset[str]] = frozenset()
    #: what a user can do instead, added to the message of an unsupported tool
    hint: ClassVar[str] = ""

    def unsupported(self, what: str) -> ConfigError:
        return ConfigError(f"{what} is not available for task {self.name!r} runs.{' ' + self.hint if self.hint else ''}")

    def require(self, tool: str) -> None:
        """Raise the one-line error when ``kdistill <tool>`` does not apply to this task."""
        if tool not in self.tools:
            raise self.unsupported(f"kdistill {tool}")

    # -- one run -------------------------------------------------------------------------
    def check(self, cfg: Any, log: Log, trust: bool = False) -> None:
        """``kdistill train --check``: build everything, train nothing; raise on a mistake."""
        raise self.unsupported("--check")

    def check_resume(self, cfg: Any, run_dir: str | Path | None = None) -> Path | None:
        """``kdistill train --resume``: the folder to continue (``None``: the one the run
        would use anyway); raise when there is nothing to resume (the grid resumes its cells
        without this check: a missing cell folder is a fresh start there)."""
        return None

    def run(self, cfg: Any, run_dir: str | Path | None = None, resume: bool = False, log: Log = print,
            trust: bool = False) -> dict[str, Any]:
        """Train one run into its folder and return ``results.json``'s content."""
        raise self.unsupported("training")

    def summary(self, result: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
        """The table ``kdistill train`` prints: a title, the columns, the rows."""
        return f"run {result.get('name', '')}", [], []

    # -- readers of a finished run folder ------------------------------------------------
    def evaluate(self, run_dir: Path, trust_code: bool = False) -> dict[str, Any]:
        raise self.unsupported("kdistill eval")

    def export(self, run_dir: Path, out: Path | None = None, **options: Any) -> dict[str, Any]:
        raise self.unsupported("kdistill export")

    def profile(self, run_dir: Path, **options: Any) -> dict[str, Any]:
        raise self.unsupported("kdistill profile")

    def generate(self, run_dir: Path, prompts: list[str], **options: Any) -> list[dict[str, str]]:
        raise self.unsupported("kdistill generate")

    def report_blocks(self, records: list[Any]) -> list[tuple]:
        """Extra report blocks (``("h2", text)``, ``("table", markdown)``...) for these runs."""
        return []

    # -- compare / sweep: sharing one trained teacher between cells ------------------------
    def teacher_key(self, cfg: Any, mode: str) -> str | None:
        """Cells with the same key share one trained teacher; ``None``: nothing to share."""
        return None

    def trained_teacher(self, cell_dir: Path, cfg: Any) -> list[str] | None:
        """What a finished cell left for the next cells of its key (``None``: no teacher yet)."""
        return None

    def reuse_teacher(self, cfg: Any, found: list[str]) -> Any:
        """``cfg`` with its teacher replaced by the one ``trained_teacher`` found."""
        return cfg


TASKS: Registry[Task] = Registry("task")


def register_task(name: str):
    """Class decorator: register a :class:`Task` subclass (one instance) under ``name``."""

    def deco(cls: type[Task]) -> type[Task]:
        cls.name = name
        TASKS.register(name)(cls())
        return cls

    return deco


def task_named(name: Any) -> Task:
    """The registered task ``name``; a :class:`ConfigError` naming the known ones otherwise."""
    if not isinstance(name, str) or name not in TASKS:
        from .errors import did_you_mean

        hint = did_you_mean(str(name), TASKS.names()) if isinstance(name, str) else ""
        raise ConfigError(f"unknown task {name!r}.{hint} Known tasks: {', '.join(TASKS.names())} (a task "
                          "registered in your own module must be imported before the config is loaded).")
    return TASKS.get(name)
