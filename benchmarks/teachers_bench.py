"""Issue 28's three measurements on a small real corpus: the license texts of Debian's
``base-files`` (``/usr/share/common-licenses``), paragraphs as records.

* ``served``: a student trained with forward KL from the top-k cache written through
  ``kdistill serve-teacher`` (a real server process on 127.0.0.1) against the same student
  from the in-process cache of the same teacher (same seed).
* ``cross``: a BPE teacher (a 512-token byte-level BPE trained here on the corpus) and a
  byte-level student: CE + ULD and CE + GOLD against CE alone, 3 seeds.
* ``multi``: two teachers, one trained on the GNU licenses, one on the others; the
  student learns from both routed per record (its ``teacher`` column) vs averaged vs each
  alone vs no teacher, 3 seeds.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/teachers_bench.py --out runs/teachers \
        --parts served,cross,multi --seeds 0,1,2

Writes OUT/teachers.json (and prints it): validation perplexity per run, mean ± sample std.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from kdistill.config import load_config
from kdistill.lm.suite import llama
from kdistill.tasks.causal_lm.run import run_lm

LICENSES = Path("/usr/share/common-licenses")
GNU = ("GPL-1", "GPL-2", "GPL-3", "LGPL-2", "LGPL-2.1", "LGPL-3", "GFDL-1.2", "GFDL-1.3")
OTHER = ("Apache-2.0", "Artistic", "BSD", "CC0-1.0", "MPL-1.1", "MPL-2.0")
STUDENT = llama(1, 64)
TEACHER = llama(2, 128)


def records(out: Path, per_domain: int) -> Path:
    """``out/records.jsonl``: paragraphs (>= 80 characters) of both domains, alternating,
    ``per_domain`` each; plus one file per domain."""
    doms = {}
    for dom, names in (("gnu", GNU), ("other", OTHER)):
        paras = []
        for n in names:
            text = (LICENSES / n).read_text(encoding="utf-8", errors="replace")
            paras += [" ".join(p.split()) for p in text.split("\n\n") if len(" ".join(p.split())) >= 80]
        doms[dom] = paras[:per_domain]
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for pair in zip(*([{"text": p, "teacher": d} for p in doms[d]] for d in doms)) for r in pair]
    (out / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for d in doms:
        (out / f"{d}.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in doms[d]))
    return out / "records.jsonl"


def raw(train: Path, out: Path, name: str, model, method, epochs: int, seed: int, teacher=None,
        tokenizer: str = "byte", **lm) -> dict:
    return {"task": "causal-lm",
            "data": {"train": str(train), "block_size": 128, "batch_size": 16, "val_split": 0.1, "split_seed": 0},
            "tokenizer": tokenizer, "teacher": teacher, "student": {"model": "hf-config", "kwargs": model},
            "method": method, "lm": lm,
            "train": {"epochs": epochs, "lr": 3e-3, "optimizer": "adamw", "weight_decay": 0.01, "schedule": "cosine",
                      "warmup_epochs": 1, "seed": seed, "device": "cpu", "progress": False, "grad_clip": 1.0},
            "output": {"dir": str(out), "name": name}}


def run(cfg: dict) -> dict:
    done = Path(cfg["output"]["dir"]) / cfg["output"]["name"] / "results.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    res = run_lm(load_config(base=cfg), resume=True, log=lambda s: None)
    print(f"{cfg['output']['name']}: val ppl {res['final']['val']['ppl']:.4f} ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    return res


def ppl(res: dict) -> float:
    return round(res["final"]["val"]["ppl"], 4)


def summary(values: list[float]) -> dict:
    return {"mean": round(statistics.mean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0, "values": values}


def teacher_folder(train: Path, out: Path, name: str, epochs: int, tokenizer: str = "byte") -> Path:
    run(raw(train, out, name, TEACHER, {"name": "ce"}, epochs, 0, tokenizer=tokenizer))
    return out / name / "student"


def part_served(corpus: Path, out: Path, args) -> dict:
    t = teacher_folder(corpus, out, "teacher", args.teacher_epochs)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "kdistill.cli", "serve-teacher", str(t), "--port", "0",
                             "--name", "license-teacher"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        url = proc.stdout.readline().split(" at ")[-1].strip()
        served = {"kind": "served", "url": url, "model": "license-teacher", "top_k": args.k, "concurrency": 2}
        a = run(raw(corpus, out, "served", STUDENT, {"name": "forward_kl"}, args.epochs, 0, served))
    finally:
        proc.terminate()
        proc.wait(30)
    b = run(raw(corpus, out, "in-process", STUDENT, {"name": "forward_kl"}, args.epochs, 0, {"model": f"hf:{t}"},
                cache_k=args.k))
    return {"served": ppl(a), "in_process": ppl(b), "relative_difference": round(ppl(a) / ppl(b) - 1, 6),
            "fill_seconds": a["teacher"]["cache"].get("seconds"), "requests": a["teacher"]["cache"].get("requests")}


def bpe_tokenizer(corpus_files: list[Path], folder: Path, vocab: int = 512) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if (folder / "tokenizer.json").is_file():
        return folder
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train([str(f) for f in corpus_files], trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>").save_pretrained(str(folder))
    return folder


def part_cross(corpus: Path, out: Path, args, seeds) -> dict:
    bpe = bpe_tokenizer([LICENSES / n for n in GNU + OTHER], out / "bpe")
    t = teacher_folder(corpus, out, "bpe-teacher", args.teacher_epochs, tokenizer=f"hf:{bpe}")
    teacher = {"model": f"hf:{t}"}
    rows = {"alone (ce)": [], "ce + uld": [], "ce + gold": []}
    for seed in seeds:
        rows["alone (ce)"].append(ppl(run(raw(corpus, out, f"alone-s{seed}", STUDENT, {"name": "ce"}, args.epochs,
                                              seed))))
        for m in ("uld", "gold"):
            method = [{"name": "ce"}, {"name": m}]
            rows[f"ce + {m}"].append(ppl(run(raw(corpus, out, f"{m}-s{seed}", STUDENT, method, args.epochs, seed,
                                                 teacher))))
    bpe_res = json.loads((out / "bpe-teacher" / "results.json").read_text())
    return {"teacher_bpe_val_ppl_per_token": ppl(bpe_res), **{k: summary(v) for k, v in rows.items()}}


def part_multi(corpus: Path, out: Path, args, seeds) -> dict:
    ta = teacher_folder(out / "gnu.jsonl", out, "teacher-gnu", args.teacher_epochs)
    tb = teacher_folder(out / "other.jsonl", out, "teacher-other", args.teacher_epochs)
    members = [{"model": f"hf:{ta}", "name": "gnu"}, {"model": f"hf:{tb}", "name": "other"}]
    variants = {
        "alone (ce)": (None, {"name": "ce"}),
        "gnu teacher only": ({"model": f"hf:{ta}"}, {"name": "forward_kl"}),
        "other teacher only": ({"model": f"hf:{tb}"}, {"name": "forward_kl"}),
        "averaged (fixed 1/2)": ({"kind": "multi", "members": members}, {"name": "forward_kl"}),
        "routed (teacher column)": ({"kind": "multi", "members": members, "weighting": "route"},
                                    {"name": "forward_kl"}),
        "entropy-weighted": ({"kind": "multi", "members": members, "weighting": "entropy"}, {"name": "forward_kl"}),
    }
    rows = {k: [] for k in variants}
    for seed in seeds:
        for k, (teacher, method) in variants.items():
            name = k.split(" ")[0] + f"-s{seed}"
            rows[k].append(ppl(run(raw(corpus, out, name, STUDENT, method, args.epochs, seed, teacher))))
    return {k: summary(v) for k, v in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs/teachers"))
    ap.add_argument("--parts", default="served,cross,multi")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--teacher-epochs", type=int, default=8)
    ap.add_argument("--per-domain", type=int, default=300)
    ap.add_argument("--k", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    corpus = records(args.out, args.per_domain)
    out_json = args.out / "teachers.json"
    result = json.loads(out_json.read_text()) if out_json.is_file() else {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    for part in args.parts.split(","):
        t0 = time.perf_counter()
        sub = args.out / part
        if part == "served":
            result[part] = part_served(corpus, sub, args)
        elif part == "cross":
            result[part] = part_cross(corpus, sub, args, seeds)
        else:
            (sub).mkdir(parents=True, exist_ok=True)
            for f in ("gnu.jsonl", "other.jsonl"):
                (sub / f).write_bytes((args.out / f).read_bytes())
            result[part] = part_multi(corpus, sub, args, seeds)
        result[part]["seconds"] = round(time.perf_counter() - t0)
        result[part]["settings"] = {"epochs": args.epochs, "teacher_epochs": args.teacher_epochs, "seeds": seeds,
                                    "per_domain": args.per_domain, "k": args.k, "commit": commit,
                                    "machine": platform.machine(), "torch": torch.__version__}
        out_json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
