"""One causal-LM run (``task: causal-lm``): tokenizer, text data, teacher (loaded from a
local folder, or trained first in the run), the regime (supervised / sequence-level /
on-policy), the student trained by the same Distiller and Trainer as image runs, and the
run folder (``config.yaml``, ``metrics.jsonl``, ``results.json``, ``student/`` and
``teacher/`` as Hugging Face folders usable as ``hf:PATH``)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from ...atomic import atomic_write_json, atomic_write_text
from ...data import split
from ...devices import resolve_device
from ...distributed import is_main_process, main_process_first, sync_processes
from ...engine.trainer import Trainer, get_accelerator
from ...errors import ConfigError, DataError
from ...lm.chunked import LMDistiller
from ...lm.cross_tokenizer import cross_methods, cross_teacher
from ...lm.data import TokenDataset, load_text_dataset, read_jsonl, records_dataset
from ...lm.generate import complete_rows, sample
from ...lm.metrics import lm_metrics
from ...lm.models import CausalLM, build_causal_lm, check_same_tokenizer, folder_tokenizer, load_tokenizer
from ...lm.onpolicy import OnPolicyDistiller
from ...methods import Distiller, build_term, create
from ...safe_read import read_json
from .config import LMRunConfig
from .positions import check_positions


def run_dir_for(cfg: LMRunConfig, run_dir: str | Path | None) -> Path:
    if run_dir is not None:
        return Path(run_dir)
    what = "+".join(t.get("name", "?") for t in cfg.method_terms())
    name = cfg.output.name or f"{time.strftime('%Y%m%d-%H%M%S')}-lm-{cfg.lm.regime}-{what}"
    return Path(cfg.output.dir) / name


def resolve_tokenizer(cfg: LMRunConfig):
    """The run's tokenizer: ``tokenizer``, else the student's folder's, else the teacher's."""
    if cfg.tokenizer is not None:
        return load_tokenizer(cfg.tokenizer)
    for m in (cfg.student, cfg.teacher):
        tok = folder_tokenizer(m.model) if m is not None else None
        if tok is not None:
            return tok
    raise ConfigError("No tokenizer: set 'tokenizer: byte' (built in) or 'tokenizer: hf:PATH', or give a model "
                      "folder (hf:PATH) that holds one.")


def load_data(cfg: LMRunConfig, tok) -> tuple[TokenDataset, TokenDataset]:
    d = cfg.data
    args = dict(block_size=d.block_size, prompt_tokens=cfg.lm.prompt_tokens, separator=d.separator,
                columns=d.columns())
    train = load_text_dataset(d.train, tok, max_blocks=d.max_blocks, **args)
    if d.val is not None:
        return train, load_text_dataset(d.val, tok, **args)
    if d.val_split <= 0:
        raise ConfigError("A causal-LM run needs validation text: set data.val or data.val_split > 0.")
    return split(train, d.val_split, d.split_seed, hint="use more text, a smaller block_size, or a val file")


def train_lm(model: CausalLM, distiller: Distiller, train: TokenDataset, val: TokenDataset, cfg_train, cfg: LMRunConfig,
             run_dir: Path, resume: bool, log, teacher: CausalLM | None, role: str = "student") -> dict[str, Any]:
    ebs = cfg.data.eval_batch_size

    def metrics_fn(student, ds):
        device = next(student.parameters()).device
        return lm_metrics(student, ds, ebs, device, teacher)

    trainer = Trainer(distiller, train, {"val": val}, cfg_train, run_dir, cfg.data.batch_size, ebs, None, None, log,
                      cfg.model_dump(mode="json"), metrics_fn=metrics_fn, role=role)
    return trainer.fit(resume=resume)


def prepare_teacher(cfg: LMRunConfig, tok, train: TokenDataset, val: TokenDataset, run_dir: Path, resume: bool,
                    log) -> tuple[CausalLM | None, dict[str, Any]]:
    """The teacher network (frozen by the distiller), trained first with cross-entropy when it
    is an ``hf-config`` model; saved as the Hugging Face folder ``run_dir/teacher`` (beside
    its metrics.jsonl; usable as ``hf:RUN/teacher``, reused on ``--resume``)."""
    t = cfg.teacher
    if t is None:
        return None, {}
    t_tok = folder_tokenizer(t.model) or tok
    if not cross_methods(cfg):  # uld and gold take a teacher with another tokenizer
        check_same_tokenizer(t_tok, tok, cfg.lm.regime)
    saved = teacher_folder(run_dir)
    if t.model.startswith("hf:"):
        net, record = build_causal_lm(t.model, {}, t_tok.vocab_size)
        net.tokenizer = t_tok
    elif resume and (saved / "config.json").is_file():
        net, record = build_causal_lm(f"hf:{saved}", {}, tok.vocab_size)
        record["trained_in_run"] = True
    else:
        tcfg = cfg.teacher_train()
        net, record = build_causal_lm(t.model, t.kwargs, tok.vocab_size, seed=tcfg.seed, eos_id=tok.eos_id)
        if cfg.lm.gradient_checkpointing:
            net.gradient_checkpointing()
        log(f"Training the teacher ({record['params']:,} parameters) for {tcfg.epochs} epochs.")
        ce = LMDistiller.wrap(create("ce", net), cfg.lm.loss_chunk)
        res = train_lm(net, ce, train, val, tcfg, cfg, run_dir / "teacher", resume, log, None, role="teacher")
        if is_main_process():  # every process holds the same trained teacher; one writes it
            net.save(saved, tok)
            atomic_write_json(saved / "results.json", {"task": "causal-lm", "role": "teacher", **res})
        record |= {"trained_in_run": True, "train_time_s": res["train_time_s"]}
    weights = Path(t.model.removeprefix("hf:")) if t.model.startswith("hf:") else saved
    # where the weights are: runs sharing one teacher share this (compare's teacher row)
    record["checkpoint"] = str((weights / "model.safetensors").resolve())
    if t_tok.identity() == tok.identity():  # the same vocabulary: the teacher's perplexity compares
        record["val"] = lm_metrics(net, val, cfg.data.eval_batch_size, next(net.parameters()).device)
        record["metrics"] = {"val": record["val"]}  # where compare and report read a teacher's numbers
    return net, record


def teacher_folder(run_dir: Path) -> Path:
    """The teacher's Hugging Face folder of a run: ``RUN/teacher`` (``RUN/teacher/model`` in
    run folders written before the task seam)."""
    old = run_dir / "teacher" / "model"
    return old if (old / "config.json").is_file() else run_dir / "teacher"


def sequence_transfer(teacher: CausalLM, train: TokenDataset, tok, cfg: LMRunConfig, run_dir: Path, log) -> TokenDataset:
    """Sequence-level KD (Kim & Rush 2016): the teacher completes every training prompt once
    (greedy, or sampled at ``lm.gen_temperature``); the completions, stored in
    ``run_dir/transfer.jsonl`` as token ids, are the student's training set (targets on the
    completions only). An existing transfer set of the same data is reused."""
    path = run_dir / "transfer.jsonl"
    meta_path = run_dir / "transfer.json"
    fp = train.fingerprint()
    # the main process writes the transfer set; the others, after it, find it and reuse it
    with main_process_first():
        if path.is_file() and meta_path.is_file() and _recorded_data(meta_path) == fp:
            log(f"Reusing the teacher's completions in {path}.")
        else:
            g = torch.Generator().manual_seed(cfg.train.seed)
            temp = 0.0 if cfg.lm.greedy else cfg.lm.gen_temperature
            t0 = time.perf_counter()
            lines = []
            t_tok = getattr(teacher, "tokenizer", tok)
            if t_tok.identity() != tok.identity():
                lines = _completions_through_text(teacher, t_tok, train, tok, cfg, temp, g)
            for b in ([] if lines else train.batches(cfg.data.eval_batch_size)):
                plen = train.prompt_len[b["index"]]
                x, y = complete_rows(teacher, b["x"], plen, cfg.lm.max_new_tokens, temp, g, eos_id=tok.eos_id)
                for row_x, row_y, p in zip(x.tolist(), y.tolist(), plen.tolist()):
                    p = max(int(p), 1)
                    completion = [row_x[t + 1] for t in range(len(row_y)) if row_y[t] != -100]
                    lines.append(json.dumps({"prompt_ids": row_x[:p], "completion_ids": completion}))
            atomic_write_text(path, "\n".join(lines) + "\n")
            atomic_write_json(meta_path, {"data": fp, "rows": len(lines), "greedy": cfg.lm.greedy,
                                          "seconds": round(time.perf_counter() - t0, 2)})
            log(f"Teacher completions for {len(lines)} prompts written to {path}.")
    return records_dataset(read_jsonl(path), tok, train.input_shape[0], "transfer")


def _recorded_data(meta_path: Path) -> str | None:
    """The data fingerprint a transfer set's ``transfer.json`` records (``None``: damaged)."""
    try:
        return read_json(meta_path).get("data")
    except DataError:
        return None


def _completions_through_text(teacher, t_tok, train: TokenDataset, tok, cfg: LMRunConfig, temp: float, g) -> list[str]:
    """Teacher completions when its tokenizer differs from the student's: each prompt is
    decoded to text, encoded with the teacher's tokenizer, completed (one row at a time),
    and the completion's text encoded with the student's tokenizer."""
    lines = []
    device = next(teacher.parameters()).device
    for i in range(len(train)):
        p = max(int(train.prompt_len[i]), 1)
        row = train.take(torch.tensor([i]))["x"][0]
        prompt_ids = row[:p].tolist()
        t_ids = t_tok.encode(tok.decode(prompt_ids)) or [t_tok.eos_id]
        new = cfg.lm.max_new_tokens or (train.input_shape[0] - p)
        full = sample(teacher, torch.tensor([t_ids], device=device), new, temp, g)[0, len(t_ids):].tolist()
        if t_tok.eos_id in full:
            full = full[: full.index(t_tok.eos_id)]
        completion = tok.encode(t_tok.decode(full))[: train.input_shape[0] - p]
        lines.append(json.dumps({"prompt_ids": prompt_ids, "completion_ids": completion}))
    return lines


def build_distiller(cfg: LMRunConfig, student: CausalLM, teacher: CausalLM | None, train: TokenDataset, tok) -> Distiller:
    terms_cfg = cfg.method_terms()
    if len(terms_cfg) == 1 and cfg.lm.regime != "on_policy":
        m = dict(terms_cfg[0])
        made = create(m.pop("name"), student, teacher if _needs_teacher(terms_cfg) else None, **m)
        return LMDistiller.wrap(made, cfg.lm.loss_chunk)
    terms = []
    for spec in terms_cfg:
        spec = dict(spec)
        terms.append(build_term(spec.pop("name"), student, teacher, None, **spec))
    if cfg.lm.regime == "on_policy":
        return OnPolicyDistiller(student, teacher, terms, train.prompt_len, cfg.lm.lmbda, cfg.lm.max_new_tokens,
                                 cfg.lm.gen_temperature, cfg.train.seed, tok.eos_id, cfg.lm.loss_chunk)
    return LMDistiller(student, teacher if _needs_teacher(terms_cfg) else None, terms, cfg.lm.loss_chunk)


def _needs_teacher(terms_cfg) -> bool:
    from ...methods import METHODS

    return any(METHODS.get(t.get("name")).needs_teacher for t in terms_cfg)


def student_samples(student: CausalLM, tok, prompts: list[str], new_tokens: int) -> list[dict[str, str]]:
    """Greedy completions of fixed prompts (shown in results.json)."""
    out = []
    device = next(student.parameters()).device
    for p in prompts:
        ids = tok.encode(p) or [tok.eos_id]
        full = sample(student, torch.tensor([ids], device=device), new_tokens, temperature=0.0)
        out.append({"prompt": p, "completion": tok.decode(full[0, len(ids):].tolist())})
    return out


def build_student(cfg: LMRunConfig, tok) -> tuple[CausalLM, dict[str, Any]]:
    """The student network (seeded by ``train.seed``), with ``lm.gradient_checkpointing``."""
    student, record = build_causal_lm(cfg.student.model, cfg.student.kwargs, tok.vocab_size, seed=cfg.train.seed,
                                      eos_id=tok.eos_id)
    if cfg.student.peft is not None:  # LoRA: only the adapters train (kdistill.lm.lora)
        from ...lm.lora import apply_lora

        record |= apply_lora(student, cfg.student.peft.model_dump(), cfg.train.seed)
    if cfg.lm.gradient_checkpointing:
        student.gradient_checkpointing()
        record["gradient_checkpointing"] = True
    return student, record


def open_lm_run(cfg: LMRunConfig, run_dir: str | Path | None, resume: bool) -> Path:
    """The run folder, with its config.yaml (written by the main process)."""
    path = run_dir_for(cfg, run_dir)
    if (path / "results.json").exists() and not resume:
        raise ConfigError(f"Run folder {path} already holds a finished run; pick another output.name or pass --resume.")
    path.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        atomic_write_text(path / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


def text_and_tokenizer(cfg: LMRunConfig, log) -> tuple[Any, TokenDataset, TokenDataset]:
    """The run's tokenizer and its training and validation rows, every model's position
    limit checked against ``data.block_size`` first (one message, before anything trains)."""
    tok = resolve_tokenizer(cfg)
    check_same_tokenizer(folder_tokenizer(cfg.student.model), tok, "supervised")
    check_positions(cfg, tok)
    train, val = load_data(cfg, tok)
    log(f"Text: {len(train)} training rows ({train.targets():,} target tokens), {len(val)} validation rows.")
    return tok, train, val


def check_teacher_use(cfg: LMRunConfig, teacher, tok) -> bool:
    """Whether the teacher shares the student's vocabulary; refuses token-level methods
    across vocabularies."""
    same_vocab = teacher is not None and getattr(teacher, "tokenizer", tok).identity() == tok.identity()
    if teacher is not None and not same_vocab and _needs_teacher(cfg.method_terms()) and not cross_methods(cfg):
        raise ConfigError(
            "The teacher's tokenizer differs from the student's: sequence-level KD can pass text between them, "
            "but the token-level method(s) "
            f"{[t.get('name') for t in cfg.method_terms()]} compare next-token distributions over one vocabulary. "
            "Use method: {name: ce} (training on the teacher's completions), or one shared tokenizer."
        )
    return same_vocab


def needs_teacher(cfg: LMRunConfig) -> bool:
    """A teacher is used: a method needs one, or the regime writes or scores with one."""
    need = _needs_teacher(cfg.method_terms()) or cfg.lm.regime != "supervised"
    if need and cfg.teacher is None:
        raise ConfigError(f"lm.regime {cfg.lm.regime!r} with method(s) "
                          f"{[t.get('name') for t in cfg.method_terms()]} needs a teacher section.")
    return need


def cached_teacher(cfg: LMRunConfig, teacher, train: TokenDataset, tok, path: Path, t_record: dict, log):
    """The live teacher, or (``lm.cache_k``) the top-k cache of it, written once."""
    if cfg.lm.cache_k is None:
        return teacher
    from ...cache.tokens import LMCachedTeacher, write_lm_cache

    folder = Path(cfg.lm.cache_dir) if cfg.lm.cache_dir else path / "teacher_cache"
    # the main process writes the cache; the others, after it, find it and check its fingerprints
    with main_process_first():
        t_record["cache"] = write_lm_cache(teacher, train, tok, cfg.lm.cache_k, folder, cfg.data.eval_batch_size, log)
    return LMCachedTeacher(folder, train)


def run_lm(cfg: LMRunConfig, run_dir: str | Path | None = None, resume: bool = False,
           log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train one causal-LM run and return its results (also written to ``results.json``)."""
    path = open_lm_run(cfg, run_dir, resume)
    main = is_main_process()
    log = log if main else _silent  # several processes (torchrun): one writes the run folder and speaks
    # start the process group (if any) now: the main process writes transfer sets and
    # caches before any Trainer exists, and the others wait for them
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        get_accelerator(resolve_device(cfg.train.device), cfg.train.precision, cfg.train.fsdp)
    tok, train, val = text_and_tokenizer(cfg, log)
    served = getattr(cfg.teacher, "kind", None) is not None  # served or several: kdistill.lm.served_run
    need = needs_teacher(cfg)
    teacher, t_record = prepare_teacher(cfg, tok, train, val, path, resume, log) if need and not served else (None, {})
    same_vocab = check_teacher_use(cfg, teacher, tok)
    if served:
        from ...lm.served_run import other_teacher

        train, dist_teacher, t_record = other_teacher(cfg, tok, train, path, log)
    elif teacher is not None and not same_vocab and cross_methods(cfg):  # uld, gold: the live teacher, wrapped
        dist_teacher = cross_teacher(cfg, teacher, tok)
    else:
        if cfg.lm.regime == "sequence":
            train = sequence_transfer(teacher, train, tok, cfg, path, log)
        dist_teacher = cached_teacher(cfg, teacher, train, tok, path, t_record, log)
    student, s_record = build_student(cfg, tok)
    distiller = build_distiller(cfg, student, dist_teacher, train, tok)
    res = train_lm(student, distiller, train, val, cfg.train, cfg, path, resume, log, teacher if same_vocab else None)
    if main:
        student.save(path / "student", tok)
    result = lm_results(cfg, path, tok, train, val, t_record, s_record, res, student)
    if isinstance(distiller, OnPolicyDistiller):
        result["on_policy_draws"] = int(distiller.draws)
    if main:
        atomic_write_json(path / "results.json", result)
    sync_processes()  # the run folder is complete when any process returns
    return result


def lm_results(cfg: LMRunConfig, path: Path, tok, train: TokenDataset, val: TokenDataset, t_record: dict,
               s_record: dict, res: dict, student: CausalLM) -> dict[str, Any]:
    """``results.json`` of a causal-LM run: what compare, report and the readers use."""
    new = cfg.lm.max_new_tokens or 48
    s_record = s_record | {"bytes": sum(p.numel() * p.element_size() for p in student.parameters())}
    return {
        "task": "causal-lm",
        "name": path.name,
        "run_dir": str(path),
        "seed": cfg.train.seed,
        "regime": cfg.lm.regime,
        "method": cfg.method_terms(),
        "tokenizer": tok.kind,
        "data": {"train_rows": len(train), "val_rows": len(val), "train_tokens": train.targets(),
                 "val_tokens": val.targets(), "block_size": cfg.data.block_size},
        # the one shape every task's runs share (compare pairs runs on it)
        "dataset": {"name": Path(cfg.data.train).name, "num_classes": tok.vocab_size, "train": len(train),
                    "val": len(val), "fingerprint": train.fingerprint()},
        "teacher": t_record,
        "student": s_record,
        **res,
        "samples": student_samples(student, tok, cfg.lm.sample_prompts, new) if cfg.lm.sample_prompts else [],
    }


def _silent(line: str) -> None:
    return None


def evaluate_lm_run(run_dir: str | Path, teacher: str | None = None) -> dict[str, Any]:
    """Re-evaluate a finished causal-LM run's student (and its teacher, when one is at hand
    with the same tokenizer) on the run's validation text (``kdistill eval``). ``teacher``
    (``hf:PATH``): compare with this model instead of the run's own teacher (a student
    trained alone has none)."""
    from ...config import load_config

    path = Path(run_dir)
    if not (path / "student" / "config.json").is_file():
        raise ConfigError(f"{path} holds no finished causal-LM run (no student/ folder).")
    cfg = load_config(path / "config.yaml")
    tok = load_tokenizer(f"hf:{path / 'student'}")
    _, val = load_data(cfg, tok)
    student, _ = build_causal_lm(f"hf:{path / 'student'}", {}, tok.vocab_size)
    src = teacher
    if src is None and cfg.teacher is not None:
        src = cfg.teacher.model if cfg.teacher.model.startswith("hf:") else f"hf:{teacher_folder(path)}"
    teacher = None
    if src is not None:
        t_tok = folder_tokenizer(src)
        if t_tok is not None and t_tok.identity() == tok.identity():
            teacher, _ = build_causal_lm(src, {}, tok.vocab_size)
            teacher.eval()
    out = {"val": lm_metrics(student, val, cfg.data.eval_batch_size, "cpu", teacher)}
    if teacher is not None:
        out["teacher_val"] = lm_metrics(teacher, val, cfg.data.eval_batch_size, "cpu")
    return out
