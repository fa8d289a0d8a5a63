"""The readers of a finished causal-LM run folder: ``kdistill export`` (the student as a
Hugging Face folder, reloaded and checked for the same logits), ``kdistill profile``
(parameters, bytes, prefill and per-token latency of student and teacher),
``kdistill generate`` (the student completing prompts) and the report's table of the fixed
prompts' generations."""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ...engine.checkpoint import atomic_write_json
from ...errors import ConfigError
from ...lm.generate import sample
from ...lm.models import CausalLM, build_causal_lm, folder_tokenizer, load_tokenizer

#: validation rows the exported model is checked on
PARITY_ROWS = 8


def _student(run_dir: Path) -> tuple[CausalLM, Any]:
    folder = run_dir / "student"
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{run_dir} holds no finished causal-LM run (no student/ folder); finish it with "
                          "`kdistill train CONFIG --resume`.")
    tok = load_tokenizer(f"hf:{folder}")
    net, _ = build_causal_lm(f"hf:{folder}", {}, tok.vocab_size)
    return net.eval(), tok


def _parity_rows(run_dir: Path, tok) -> torch.Tensor:
    """The first validation rows of the run's own text."""
    from ...config import load_config
    from .run import load_data

    cfg = load_config(run_dir / "config.yaml")
    _, val = load_data(cfg, tok)
    return val.take(torch.arange(min(PARITY_ROWS, len(val))))["x"]


def export_lm(run_dir: Path, out: Path | None = None, format: str | None = None, **_options: Any) -> dict[str, Any]:
    """Write the student as a Hugging Face folder (weights, config, tokenizer) to ``out``
    (default ``RUN/export/hf``), load it back with ``AutoModelForCausalLM`` and compare its
    logits with the run's student on validation rows; the entry goes to ``RUN/export.json``."""
    fmt = format or "hf"
    if fmt not in ("hf", "onnx"):
        raise ConfigError(f"A causal-LM run exports --format hf (a Hugging Face folder) or onnx; got {fmt!r}.")
    student, tok = _student(run_dir)
    if fmt == "onnx":
        return export_lm_onnx(run_dir, student, tok, out)
    dest = Path(out) if out is not None else run_dir / "export" / "hf"
    if dest.exists():
        shutil.rmtree(dest)
    student.save(dest, tok)
    again, _ = build_causal_lm(f"hf:{dest}", {}, tok.vocab_size)
    x = _parity_rows(run_dir, tok)
    with torch.no_grad():
        a, b = student(x), again.eval()(x)
    entry = {
        "format": "hf",
        "path": str(dest),
        "file_bytes": sum(f.stat().st_size for f in dest.iterdir() if f.is_file()),
        "runtime": "transformers AutoModelForCausalLM",
        "parity": {"samples": int(x.shape[0]), "tokens": int(x.numel()),
                   "max_abs_diff": float((a - b).abs().max()),
                   "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean())},
    }
    _merge_json(run_dir / "export.json", "hf", entry)
    return entry


def export_lm_onnx(run_dir: Path, student: CausalLM, tok, out: Path | None = None) -> dict[str, Any]:
    """The student as ONNX (``torch.onnx.export``'s dynamo exporter; batch and sequence length
    dynamic up to ``data.block_size``): token ids ``(N, L)`` in, logits ``(N, L, V)`` out,
    checked in ONNX Runtime against PyTorch on validation rows."""
    import logging
    import warnings

    from ...config import load_config

    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("ONNX export needs the 'export' extra: pip install 'kdistill[export]'.") from None
    dest = Path(out) if out is not None else run_dir / "export" / "student.onnx"
    dest.parent.mkdir(parents=True, exist_ok=True)
    x = _parity_rows(run_dir, tok)
    block = load_config(run_dir / "config.yaml").data.block_size
    dims = {0: torch.export.Dim("batch"), 1: torch.export.Dim("tokens", max=max(block, 2))}
    level = logging.getLogger("torch.onnx").level
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(student, (x,), str(dest), input_names=["input_ids"], output_names=["logits"],
                              dynamic_shapes={"input_ids": dims}, dynamo=True, verbose=False)
    except Exception as e:  # noqa: BLE001  (the exporter's many failure types: one message)
        raise ConfigError(f"This model does not export to ONNX with torch.onnx ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); use --format hf.") from None
    finally:
        logging.getLogger("torch.onnx").setLevel(level)
    session = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    a = torch.from_numpy(session.run(None, {"input_ids": x.numpy()})[0])
    with torch.no_grad():
        b = student(x)
    entry = {"format": "onnx", "path": str(dest), "file_bytes": dest.stat().st_size,
             "runtime": f"onnxruntime {ort.__version__} (CPU)",
             "parity": {"samples": int(x.shape[0]), "tokens": int(x.numel()),
                        "max_abs_diff": float((a - b).abs().max()),
                        "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean())}}
    _merge_json(run_dir / "export.json", "onnx", entry)
    return entry


def _merge_json(path: Path, key: str, entry: dict[str, Any]) -> None:
    """``entry`` under ``key`` in the JSON object at ``path`` (other keys kept)."""
    import json

    try:
        existing = json.loads(path.read_text())
    except (OSError, ValueError):
        existing = {}
    atomic_write_json(path, {**(existing if isinstance(existing, dict) else {}), key: entry})


def _median_ms(fn, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def profile_model(net: CausalLM, prompt_len: int, new_tokens: int, repeats: int, warmup: int) -> dict[str, Any]:
    """Parameters, bytes, the prefill time of a ``prompt_len`` prompt and the time per
    generated token (greedy, Hugging Face's KV cache), batch size 1, on the CPU."""
    net = net.eval().to("cpu")
    x = torch.randint(0, net.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        prefill = _median_ms(lambda: net.hf(input_ids=x, use_cache=True), repeats, warmup)
        gen_kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                      pad_token_id=net.hf.config.eos_token_id)
        total = _median_ms(lambda: net.hf.generate(x, **gen_kw), max(1, repeats // 5), min(warmup, 1))
    return {
        "params": sum(p.numel() for p in net.parameters()),
        "bytes": sum(p.numel() * p.element_size() for p in net.parameters()),
        "prefill_ms": round(prefill, 4),
        "per_token_ms": round(max(total - prefill, 0.0) / new_tokens, 4),
        "prompt_tokens": prompt_len,
        "new_tokens": new_tokens,
    }


def _teacher_model(run_dir: Path, tok) -> CausalLM | None:
    from ...config import load_config
    from .run import teacher_folder

    cfg = load_config(run_dir / "config.yaml")
    src = None
    if cfg.teacher is not None:
        src = cfg.teacher.model if cfg.teacher.model.startswith("hf:") else f"hf:{teacher_folder(run_dir)}"
    if src is None or not (Path(src.removeprefix("hf:")) / "config.json").is_file():
        return None
    t_tok = folder_tokenizer(src) or tok
    return build_causal_lm(src, {}, t_tok.vocab_size)[0]


def profile_lm(run_dir: Path, repeats: int = 20, warmup: int = 3, teacher: bool = True, threads: int | None = None,
               new_tokens: int = 16, write: bool = True, **_options: Any) -> dict[str, Any]:
    """``kdistill profile RUN`` of a causal-LM run (writes ``RUN/profile.json``)."""
    from ...config import load_config

    student, tok = _student(run_dir)
    prompt = load_config(run_dir / "config.yaml").data.block_size
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        out: dict[str, Any] = {"student": profile_model(student, prompt, new_tokens, repeats, warmup)}
        t = _teacher_model(run_dir, tok) if teacher else None
        if t is not None:
            out["teacher"] = profile_model(t, prompt, new_tokens, repeats, warmup)
    finally:
        torch.set_num_threads(old)
    out["settings"] = {"device": "cpu", "batch_size": 1, "repeats": repeats, "warmup": warmup,
                       "threads": threads or old}
    out["columns"] = ["model", "params", "bytes", f"prefill ms ({prompt} tokens)", "ms / new token"]
    out["rows"] = [[k, f"{v['params']:,}", f"{v['bytes']:,}", f"{v['prefill_ms']:.3f}", f"{v['per_token_ms']:.3f}"]
                   for k, v in out.items() if k in ("teacher", "student")]
    if write:
        atomic_write_json(run_dir / "profile.json", out)
    return out


def generate_lm(run_dir: Path, prompts: list[str], max_new_tokens: int = 48, temperature: float = 0.0,
                seed: int = 0, **_options: Any) -> list[dict[str, str]]:
    """The student's completions of ``prompts`` (greedy at temperature 0, else sampled)."""
    if not prompts:
        raise ConfigError("Give at least one --prompt.")
    student, tok = _student(run_dir)
    g = torch.Generator().manual_seed(seed)
    out = []
    for p in prompts:
        ids = tok.encode(p) or [tok.eos_id]
        full = sample(student, torch.tensor([ids]), max_new_tokens, temperature, g)[0, len(ids):].tolist()
        if tok.eos_id in full:
            full = full[: full.index(tok.eos_id)]
        out.append({"prompt": p, "completion": tok.decode(full)})
    return out


def generations_table(records: list[Any]) -> list[tuple]:
    """The report's block of the fixed prompts (``lm.sample_prompts``) and each run's greedy
    completion, side by side: one row per run, one column per prompt."""
    prompts: list[str] = []
    for r in records:
        for smp in r.results.get("samples") or []:
            if smp.get("prompt") not in prompts:
                prompts.append(smp.get("prompt"))
    if not prompts:
        return []
    rows = []
    for r in records:
        got = {smp.get("prompt"): smp.get("completion", "") for smp in r.results.get("samples") or []}
        rows.append([r.name, *(got.get(p, "-") for p in prompts)])
    return [("h2", "Generations (greedy, fixed prompts)"), ("grid", ["run", *prompts], rows)]
