"""Paired A/B of one training step: the bench's former ``fast_step`` against
``Trainer.train_step`` (what ``kdistill bench`` times now), alternating step by step in one
process, so both see the same machine load. For a shared, noisy machine where whole-path
rounds minutes apart are not comparable::

    PYTHONPATH=src python benchmarks/bench_step_paired.py --pairs 8 --batch-size 32 \\
        --out benchmarks/results/bench_step_paired_cpu.json

Paths: ``student`` (CE alone) and ``kd_live`` (KD with a live teacher), resnet32x4 ->
resnet8x4 on Fashion-MNIST padded to 32, as ``kdistill bench``; plus ``control``, the former
step against itself (two copies), which shows the noise floor of the pairing. Each pair runs
A then B on the next batch of each side's own loader; the ratio reported is the median over
pairs of ``time(B) / time(A)``. The former step is re-created here as it was in ``bench.py``
before commit bc92351 (channels_last networks and batches, autocast only for bf16, forward,
backward, fused SGD step, zero_grad).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    from kdistill.config import TrainConfig
    from kdistill.data import Augment, load_dataset, subset
    from kdistill.engine.trainer import Trainer, make_optimizer
    from kdistill.methods import create
    from kdistill.models import create_model
    from kdistill.teachers import ModuleTeacher

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-train", type=int, default=512)
    ap.add_argument("--paths", default="control,student,kd_live")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    dev = torch.device("cpu")
    data = subset(load_dataset("fashion-mnist", pad_to=32).train, args.n_train, seed=0)
    aug, k, shape, bs = Augment(4, True), data.num_classes, data.input_shape, args.batch_size
    tmp = tempfile.TemporaryDirectory(prefix="kdistill-paired-")

    def distiller(path: str):
        torch.manual_seed(0)
        s = create_model("resnet8x4", k, shape)
        if path == "kd_live":
            torch.manual_seed(0)
            return create("kd", s, ModuleTeacher(create_model("resnet32x4", k, shape), k), temperature=4.0)
        return create("ce", s)

    def batches(loader):
        epoch = 0
        while True:
            for b in loader.iterate(epoch):
                if b["y"].shape[0] == bs:
                    yield b
            epoch += 1

    def former(path: str):
        """The bench's former fast_step on its former loader."""
        d = distiller(path)
        for m in [d.student] + ([d.teacher.module] if d.teacher is not None else []):
            m.to(memory_format=torch.channels_last)
        d.to(dev).train()
        opt = make_optimizer(d.trainable_parameters(), TrainConfig(optimizer="sgd", lr=0.01), dev)
        it = batches(data.loader(bs, shuffle=True, seed=0, device=dev, augment=aug, drop_last=True))

        def step():
            batch = next(it)
            batch["x"] = batch["x"].contiguous(memory_format=torch.channels_last)
            loss = d(batch)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    def trainer_step(path: str):
        cfg = TrainConfig(optimizer="sgd", lr=0.01, epochs=1, seed=0, device="cpu", precision="fp32",
                          channels_last=True, progress=False)
        t = Trainer(distiller(path), data, {}, cfg, Path(tmp.name) / path, bs, augment=aug, log=lambda line: None)
        t.prepare()
        t.model.train()
        it = batches(t.loader)

        def step():
            t.train_step(next(it))

        return step

    out = {}
    for path in args.paths.split(","):
        a = former("student" if path == "control" else path)
        b = former("student") if path == "control" else trainer_step(path)
        for _ in range(args.warmup):
            a(), b()
        ta, tb = [], []
        for i in range(args.pairs):
            first, second = (a, b) if i % 2 == 0 else (b, a)  # alternate the order within pairs too
            t0 = time.perf_counter()
            first()
            t1 = time.perf_counter()
            second()
            t2 = time.perf_counter()
            (ta, tb)[0 if first is a else 1].append(t1 - t0)
            (ta, tb)[1 if first is a else 0].append(t2 - t1)
            print(f"{path:8s} pair {i + 1}/{args.pairs}: former {ta[-1]:.3f} s  new {tb[-1]:.3f} s", flush=True)
        ratios = [y / x for x, y in zip(ta, tb)]
        out[path] = {"former_s": [round(x, 4) for x in ta], "new_s": [round(y, 4) for y in tb],
                     "median_ratio_new_over_former": round(statistics.median(ratios), 4),
                     "ratio_range": [round(min(ratios), 4), round(max(ratios), 4)],
                     "median_former_s": round(statistics.median(ta), 4), "median_new_s": round(statistics.median(tb), 4)}
        print(f"{path:8s} median new/former {out[path]['median_ratio_new_over_former']:.3f} "
              f"(range {out[path]['ratio_range']})", flush=True)
    record = {"settings": vars(args) | {"out": str(args.out) if args.out else None}, "paths": out,
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
