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
    from ..lm.config import is_lm_config
    from ..runs import run_experiment
    from ..safe_read import allow_remote_code

    allow_remote_code(trust_code)

    if is_lm_config(config, set_ or []):  # task: causal-lm (see kdistill.lm)
        from ..lm import load_lm_config, run_lm

        lm_cfg = load_lm_config(config, set_ or [])  # a mistake in the config is reported here
        if check:
            log(f"OK: {config} is a valid causal-LM config (its models are loaded when training starts).")
            return
        result = run_lm(lm_cfg, run_dir=run_dir, resume=resume, log=(lambda line: None) if quiet else log)
        from ..distributed import is_main_process

        if is_main_process():  # several processes (torchrun) print one table
            print_lm_summary(result)
        return
    cfg = load_config(config, [*(set_ or []), *(["train.progress=false"] if quiet else [])])
    say = (lambda line: None) if quiet else log
    if resume:
        from ..runs import check_resumable

        found = check_resumable(cfg, run_dir)
        if run_dir is None and not cfg.output.name:
            say(f"Resuming {found}: the unfinished run of this config in {cfg.output.dir}/.")
        run_dir = found
    if check:
        from ..schemes import check_run

        log(f"Checking {config} (nothing is trained):")
        check_run(cfg, trust=trust_checkpoint, log=log)
        log("OK: the run can start.")
        return
    if cfg.scheme:
        from ..schemes import run_scheme

        result = run_scheme(cfg, run_dir=run_dir, resume=resume, log=say, trust=trust_checkpoint)
    else:
        result = run_experiment(cfg, run_dir=run_dir, resume=resume, log=say, trust=trust_checkpoint)
    print_run_summary(result)


def print_run_summary(result: dict) -> None:
    table = Table(title=f"run {result.get('name', '')}")
    for col in ("model", "params", "test acc (last)", "test acc (best)", "agreement", "ECE"):
        table.add_column(col)
    t = result.get("teacher") or {}
    if t.get("metrics"):
        m = t["metrics"]["test"]
        table.add_row(f"teacher {t.get('model', '')}", f"{t.get('params', '')}", f"{m['acc']:.4f}", "", "", f"{m['ece']:.4f}")
    s = result.get("student", {})
    fin = result.get("final", {}).get("test", {})
    best = result.get("best", {}).get("test", {})
    if fin:
        table.add_row(f"student {s.get('model', '')}", f"{s.get('params', '')}", f"{fin['acc']:.4f}",
                      f"{best.get('acc', float('nan')):.4f}", f"{fin.get('agreement', float('nan')):.4f}", f"{fin['ece']:.4f}")
    console.print(table)
    if "run_dir" in result:
        console.print(f"Run folder: {result['run_dir']}")


def print_lm_summary(result: dict) -> None:
    table = Table(title=f"causal-LM run ({result['regime']})")
    for col in ("model", "params", "val ppl", "val token acc", "agreement"):
        table.add_column(col)
    t = result.get("teacher") or {}
    if t.get("val"):
        table.add_row("teacher", f"{t['params']:,}", f"{t['val']['ppl']:.3f}", f"{t['val']['acc']:.4f}", "")
    fin = result.get("final", {}).get("val", {})
    if fin:
        agree = f"{fin['agreement']:.4f}" if "agreement" in fin else ""
        table.add_row("student", f"{result['student']['params']:,}", f"{fin['ppl']:.3f}", f"{fin['acc']:.4f}", agree)
    console.print(table)
    console.print(f"Run folder: {result['run_dir']}")


@app.command("eval")
def eval_(run_dir: Annotated[Path, typer.Argument(help="A finished run folder.")],
          trust_code: TrustCodeOpt = False) -> None:
    """Re-evaluate a saved run's student (and teacher) on its test set."""
    from ..evaluate import evaluate_run
    from ..lm.config import is_lm_config

    if is_lm_config(run_dir / "config.yaml"):  # a causal-LM run folder
        from ..lm.experiment import evaluate_lm_run

        console.print_json(json.dumps(evaluate_lm_run(run_dir)))
        return
    out = evaluate_run(run_dir, trust_code=trust_code)
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
