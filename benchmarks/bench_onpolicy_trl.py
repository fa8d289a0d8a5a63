"""On-policy distillation throughput: kdistill against TRL's GKDTrainer on the same job.

Both train the same student (Llama-style, initial weights from one saved folder) against the
same frozen teacher on the same rows: batch 16, prompts of 64 tokens, 64 tokens sampled by
the student at temperature 0.9 every step (``lmbda = 1``: every batch is on-policy), GKD's
JSD with beta 0.5, AdamW at a constant learning rate, one CPU thread. Rounds alternate
kdistill / TRL so that a change in the machine's load hits both. Tokens/s = steps x 16 x 128
/ the seconds of the training loop (kdistill: the epoch's ``epoch_time_s`` in
``metrics.jsonl``, evaluation excluded; TRL: ``train_runtime``).

``--lmbda 0`` times the off-policy job instead (no sampling: the dataset's rows). TRL is
optional: without it only kdistill's numbers are printed.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_onpolicy_trl.py --out runs/bench-onpolicy \
        --steps 8 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import time
from pathlib import Path

import torch

from kdistill.lm import ByteTokenizer, build_causal_lm, load_lm_config, run_lm

BATCH, PROMPT, NEW = 16, 64, 64
TEACHER = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4,
           "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 256}
STUDENT = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 256}


def make_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    words = "the cat sat on a mat and a dog ran to the park while the birds sang all day long".split()

    def text(k):
        s = ""
        while len(s) < k:
            s += rng.choice(words) + " "
        return s[:k]

    return [{"prompt": text(PROMPT), "completion": text(NEW)} for _ in range(n)]


def save_models(out: Path) -> tuple[Path, Path]:
    tok = ByteTokenizer()
    paths = []
    for name, kw, seed in (("teacher", TEACHER, 1), ("student", STUDENT, 0)):
        net, _ = build_causal_lm("hf-config", kw, tok.vocab_size, seed=seed, eos_id=tok.eos_id)
        net.save(out / name, tok)
        paths.append(out / name)
    return paths[0], paths[1]


def kdistill_round(out: Path, teacher: Path, student: Path, train: Path, val: Path, r: int,
                   cache: bool = True, lmbda: float = 1.0) -> float:
    cfg = load_lm_config(base={
        "task": "causal-lm", "tokenizer": "byte",
        "data": {"train": str(train), "val": str(val), "block_size": PROMPT + NEW, "batch_size": BATCH,
                 "eval_batch_size": BATCH},
        "teacher": {"model": f"hf:{teacher}"}, "student": {"model": f"hf:{student}"},
        "method": {"name": "gkd", "beta": 0.5},
        "lm": {"regime": "on_policy", "lmbda": lmbda, "max_new_tokens": NEW, "gen_temperature": 0.9},
        "train": {"epochs": 1, "lr": 1e-4, "weight_decay": 0.0, "warmup_epochs": 0, "schedule": "constant",
                  "device": "cpu", "progress": False},
        "output": {"dir": str(out), "name": f"kdistill-l{lmbda}-r{r}{'' if cache else '-nocache'}"},
    })
    import kdistill.lm.generate as gen

    orig = gen.supports_cache
    if not cache:  # the reference loop: a full forward over the sequence per sampled token
        gen.supports_cache = lambda model: False
    try:
        res = run_lm(cfg, log=lambda line: None)
    finally:
        gen.supports_cache = orig
    row = json.loads((Path(res["run_dir"]) / "metrics.jsonl").read_text().splitlines()[-1])
    return res["steps"] * BATCH * (PROMPT + NEW) / row["epoch_time_s"]


def trl_round(out: Path, teacher: Path, student: Path, rows: list[dict], steps: int, r: int,
              lmbda: float = 1.0) -> float:
    from datasets import Dataset
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    tok = ByteTokenizer()
    vocab = {f"<{i}>": i for i in range(tok.vocab_size)}
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<0>")),
                                     eos_token=f"<{tok.eos_id}>", pad_token=f"<{tok.eos_id}>")
    ids = [tok.encode(x["prompt"]) + tok.encode(x["completion"]) for x in rows]
    ds = Dataset.from_dict({"ids": ids})

    def collate(feats):
        x = torch.tensor([f["ids"] for f in feats])
        labels = x.clone()
        labels[:, :PROMPT] = -100
        return {"input_ids": x, "attention_mask": torch.ones_like(x), "labels": labels,
                "prompts": x[:, :PROMPT], "prompt_attention_mask": torch.ones_like(x[:, :PROMPT])}

    args = GKDConfig(output_dir=str(out / f"trl-l{lmbda}-r{r}"), per_device_train_batch_size=BATCH, max_steps=steps,
                     learning_rate=1e-4, weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0,
                     lmbda=lmbda, beta=0.5, temperature=0.9, max_new_tokens=NEW, max_length=PROMPT + NEW,
                     use_cpu=True, report_to=[], save_strategy="no", logging_strategy="no",
                     disable_tqdm=True, dataloader_num_workers=0, seed=r, bf16=False)
    trainer = GKDTrainer(model=AutoModelForCausalLM.from_pretrained(str(student)),
                         teacher_model=AutoModelForCausalLM.from_pretrained(str(teacher)),
                         args=args, data_collator=collate, train_dataset=ds, processing_class=hf_tok)
    res = trainer.train()
    return steps * BATCH * (PROMPT + NEW) / res.metrics["train_runtime"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs/bench-onpolicy"))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-trl", action="store_true")
    ap.add_argument("--uncached", action="store_true", help="also time kdistill without the KV cache")
    ap.add_argument("--lmbda", type=float, default=1.0, help="share of on-policy batches (0: off-policy)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    teacher, student = save_models(args.out / "models")
    rows = make_rows(BATCH * args.steps, 0)
    train, val = args.out / "train.jsonl", args.out / "val.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    val.write_text("".join(json.dumps(r) + "\n" for r in make_rows(BATCH, 1)))
    try:
        import trl  # noqa: F401
        have_trl = not args.no_trl
    except ImportError:
        have_trl = False
    result: dict = {"kdistill": [], "trl": [], "kdistill_uncached": []}
    for r in range(args.rounds):
        result["kdistill"].append(round(kdistill_round(args.out, teacher, student, train, val, r,
                                                       lmbda=args.lmbda), 1))
        if args.uncached:
            result["kdistill_uncached"].append(
                round(kdistill_round(args.out, teacher, student, train, val, r, cache=False, lmbda=args.lmbda), 1))
        if have_trl:
            result["trl"].append(round(trl_round(args.out, teacher, student, rows, args.steps, r, args.lmbda), 1))
        print(f"round {r}: kdistill {result['kdistill'][-1]} tok/s {result['kdistill_uncached'][-1:]} uncached"
              + (f", TRL {result['trl'][-1]} tok/s" if have_trl else ""), flush=True)
    if have_trl:
        ratios = [k / t for k, t in zip(result["kdistill"], result["trl"])]
        result["ratio_per_round"] = [round(x, 3) for x in ratios]
        result["ratio_median"] = round(statistics.median(ratios), 3)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result |= {"lmbda": args.lmbda, "steps": args.steps, "batch": BATCH, "prompt": PROMPT, "new_tokens": NEW, "commit": commit,
               "torch": torch.__version__, "machine": platform.machine(), "date": time.strftime("%Y-%m-%d")}
    if have_trl:
        import transformers
        import trl

        result |= {"trl_version": trl.__version__, "transformers": transformers.__version__}
    (args.out / "bench_onpolicy_trl.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
