"""Peak memory of one causal-LM distillation step, chunked token loss against full logits.

Each configuration runs in a fresh process: a tiny Llama-style student and teacher (1
layer, width 64) over a vocabulary of V tokens, batch 1 of T tokens, one AdamW step of
forward KL with the live teacher (``lm.loss_chunk`` positions per chunk, or full logits).
Reported: the process's peak resident set (``ru_maxrss``) and its growth over the resident
set before the step (models, optimizer and inputs built), and the step's seconds. Full-logit
runs whose ``T x V`` exceeds ``--full-max`` elements are not run (they would need several
tensors of that size at once on a shared machine); the table says so.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_lm_memory.py --out runs/lm-memory.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

MODEL = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
         "num_attention_heads": 2, "num_key_value_heads": 2}


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one(vocab: int, tokens: int, chunk: int | str | None) -> dict:
    import torch

    from kdistill.lm import build_causal_lm
    from kdistill.lm.chunked import LMDistiller
    from kdistill.methods import create

    torch.set_num_threads(1)
    kw = dict(MODEL, max_position_embeddings=tokens)
    student, _ = build_causal_lm("hf-config", kw, vocab, seed=0)
    teacher, _ = build_causal_lm("hf-config", kw, vocab, seed=1)
    d = LMDistiller.wrap(create("forward_kl", student, teacher), chunk)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    x = torch.randint(0, vocab, (1, tokens), generator=torch.Generator().manual_seed(0))
    before = current_rss_mib()
    t0 = time.perf_counter()
    loss = d({"x": x, "y": x.roll(-1, 1)})["loss"]
    loss.backward()
    opt.step()
    seconds = time.perf_counter() - t0
    peak = rss_mib()
    from kdistill.methods._token_chunked import auto_chunk

    chunk = auto_chunk(vocab) if chunk == "auto" else chunk
    return {"vocab": vocab, "tokens": tokens, "chunk": chunk, "loss": round(float(loss), 6),
            "rss_before_step_mib": round(before, 1), "peak_rss_mib": round(peak, 1),
            "step_growth_mib": round(peak - before, 1), "step_s": round(seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=Path("runs/lm-memory.json"))
    ap.add_argument("--vocabs", default="32768,131072")
    ap.add_argument("--tokens", default="512,1024,2048,4096")
    ap.add_argument("--chunk", default="auto", help="positions per chunk, or auto (lm.loss_chunk's default)")
    ap.add_argument("--full-max", type=int, default=1 << 26, help="largest T x V run with full logits")
    args = ap.parse_args()
    if args.one:
        v, t, c = args.one
        print(json.dumps(one(int(v), int(t), None if c == "full" else (c if c == "auto" else int(c)))))
        return
    rows = []
    for v in (int(s) for s in args.vocabs.split(",")):
        for t in (int(s) for s in args.tokens.split(",")):
            for c in (str(args.chunk), "full"):
                if c == "full" and t * v > args.full_max:
                    rows.append({"vocab": v, "tokens": t, "chunk": None, "skipped": f"T x V > {args.full_max}"})
                    print(json.dumps(rows[-1]), flush=True)
                    continue
                proc = subprocess.run([sys.executable, __file__, "--one", str(v), str(t), c],
                                      capture_output=True, text=True)
                if proc.returncode != 0:
                    rows.append({"vocab": v, "tokens": t, "chunk": c, "failed": proc.stderr.strip()[-300:]})
                else:
                    rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "model": MODEL, "commit": commit, "machine": platform.machine(),
                                    "date": time.strftime("%Y-%m-%d")}, indent=1))


if __name__ == "__main__":
    main()
