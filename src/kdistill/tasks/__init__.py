"""The tasks: one module (or package) per kind of run, each a :class:`kdistill.task.Task`
registered under its ``task:`` name. Importing this package registers them (``import
kdistill`` does). A task of your own: see docs/ARCHITECTURE.md, "Add a task"."""

from ..task import TASKS, Headline, Task, register_task, task_named
from . import causal_lm, image

__all__ = ["TASKS", "Headline", "Task", "causal_lm", "image", "register_task", "task_named"]
