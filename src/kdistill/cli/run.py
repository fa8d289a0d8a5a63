"""`kdistill demo`, `kdistill train`, `kdistill eval` and the lists of registered names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .app import SetOpt, TrustCodeOpt, app, console, list_app, log, print_names


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's run folder.")] = Path("runs"),
    epochs: Annotated[Optional[int], typer.Option(help="Override the student epochs (a quick look; --lm: default 8).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of every model's initialisation and data order.")] = 0,
    lm: Annotated[bool, typer.Option("--lm", help="The causal-LM demo: a byte-level Llama-style teacher and "
                                     "1-layer students (alone, forward KL, reverse KL, GKD) on Debian's fortune files.")] = False,
    corpus: Annotated[Optional[Path], typer.Option(help="--lm: a text file or folder of text files instead of "
                                                   "fortunes-min's (/usr/share/games/fortunes).")] = None,
    teacher_layers: Annotated[Optional[int], typer.Option(min=1, help="--lm: the teacher's layers (default 6).")] = None,
    teacher_epochs: Annotated[Optional[int], typer.Option(min=1, help="--lm: the teacher's epochs (default 10).")] = None,
) -> None:
    """Distil a CNN into an MLP on MNIST-1D (generated locally): scratch vs KD vs KD + transfer set.
    With --lm: distil a 6-layer causal LM into 1-layer students on Debian's fortune files."""
    if lm:
        from ..demo import LM_TEACHER_LAYERS, print_lm_demo_table, run_lm_demo

        result = run_lm_demo(out, corpus=corpus, teacher_layers=teacher_layers or LM_TEACHER_LAYERS, epochs=epochs,
                             teacher_epochs=teacher_epochs, seed=seed, log=log)
        print_lm_demo_table(result, console)
        return
    given = [flag for flag, v in (("--corpus", corpus), ("--teacher-layers", teacher_layers),
                                  ("--teacher-epochs", teacher_epochs)) if v is not None]
    if given:
        from ..errors import ConfigError

        raise ConfigError(f"{', '.join(given)} belong(s) to the causal-LM demo: add --lm.")
    from ..demo import print_demo_table, run_demo

    result = run_demo(out, epochs=epochs, seed=seed, log=log)
    print_demo_table(result, console)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML config (sections data, teacher, student, method, train, output).")],
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in the output folder from its last checkpoint.")] = False,
    run_dir: Annotated[Optional[Path], typer.Option("--run-dir", help="Exact run folder (default: output.dir/output.name).")] = None,
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint", help="Allow loading checkpoints that need pickle (runs code from the file).")] = False,
    check: Annotated[bool, typer.Option("--check", help="Only check the run (data, every network, taps, method terms) and exit; trains nothing.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or per-epoch lines (for logs): errors and the final table only.")] = False,
    trust_code: Annotated[bool, typer.Option("--trust-code", help="Let Hugging Face model and tokenizer folders (hf:PATH) run their own Python (auto_map); only for folders you trust.")] = False,
) -> None:
    """Train one run (the teacher first, if it has no checkpoint). Everything is checked before anything trains."""
    from ..config import load_config
    from ..distributed import is_main_process
    from ..safe_read import allow_remote_code
    from ..task import task_named

    allow_remote_code(trust_code)

    cfg = load_config(config, [*(set_ or []), *(["train.progress=false"] if quiet else [])])
    task = task_named(cfg.task)  # the kind of run (`task:` in the config) does the work
    if resume:
        found = task.check_resume(cfg, run_dir)
        if found is not None and run_dir is None and not cfg.output.name and not quiet:
            log(f"Resuming {found}: the unfinished run of this config in {cfg.output.dir}/.")
        run_dir = found or run_dir
    if check:
        log(f"Checking {config} (task {task.name}; nothing is trained):")
        task.check(cfg, log, trust=trust_checkpoint)
        log("OK: the run can start.")
        return
    result = task.run(cfg, run_dir=run_dir, resume=resume, log=(lambda line: None) if quiet else log,
                      trust=trust_checkpoint)
    if is_main_process():  # several processes (torchrun) print one table
        print_summary(task.summary(result), result)


def print_summary(summary: tuple[str, list[str], list[list[str]]], result: dict) -> None:
    title, cols, rows = summary
    table = Table(title=title)
    for col in cols:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if "run_dir" in result:
        console.print(f"Run folder: {result['run_dir']}")


@app.command("eval")
def eval_(run_dir: Annotated[Path, typer.Argument(help="A finished run folder.")],
          trust_code: TrustCodeOpt = False) -> None:
    """Re-evaluate a saved run's student (and teacher) on its test set."""
    from ..config import run_task

    out = run_task(run_dir).evaluate(run_dir, trust_code=trust_code)
    console.print_json(json.dumps(out))


@list_app.command("methods")
def list_methods(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Distillation methods (loss terms)."""
    from ..methods import METHODS

    print_names("methods", METHODS.names(), as_json)


@list_app.command("models")
def list_models(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Models of the zoo."""
    from ..models import MODELS

    print_names("models", MODELS.names(), as_json)


@list_app.command("datasets")
def list_datasets(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Datasets."""
    from ..data import DATASETS

    print_names("datasets", DATASETS.names(), as_json)
