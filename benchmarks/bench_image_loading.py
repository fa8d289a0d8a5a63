"""KD training throughput from an image folder, streamed vs resident vs the in-memory source.

    python benchmarks/make_imagefolder.py FOLDER --limit 12000
    python benchmarks/bench_image_loading.py FOLDER [--rounds 3] [--steps 30] [--workers 1]

One KD step = a live teacher's forward + the student's forward/backward/AdamW step
(convnet4 -> convnet2, the pair of examples/imagefolder_kd.yaml, batch 128, 28x28 grey).
Three data paths feed the same step: ``memory`` (the ``fashion-mnist`` IDX source,
device-resident arrays), ``resident`` (the image folder decoded once into memory) and
``streamed`` (the folder decoded per batch in DataLoader workers). Rounds interleave the
paths (memory, resident, streamed, memory, ...) so machine load hits them alike; each round
times ``--steps`` steps of a fresh epoch (worker start-up included) and the time the step
loop waited for the next batch. Prints and appends one JSON record (command, commit,
hardware, settings, per-round numbers, medians, ratios) to results/image_loading.jsonl.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from kdistill.data import Augment, load_dataset
from kdistill.methods import create
from kdistill.models import create_model
from kdistill.teachers import ModuleTeacher

HERE = Path(__file__).resolve().parent


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def time_round(train, batch, steps, seed, epoch):
    torch.manual_seed(seed)
    teacher = create_model("convnet4", 10, (1, 28, 28)).eval()
    student = create_model("convnet2", 10, (1, 28, 28))
    distiller = create("kd", student, ModuleTeacher(teacher, 10), example=train.example(4))
    opt = torch.optim.AdamW(distiller.trainable_parameters(), lr=1e-3)
    loader = train.loader(batch, seed=seed, augment=Augment(shift=2, flip=True))
    waited, n = 0.0, 0
    t0 = time.perf_counter()
    it = loader.iterate(epoch)
    for _ in range(steps):
        w0 = time.perf_counter()
        b = next(it)
        waited += time.perf_counter() - w0
        out = distiller(b)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        n += b["y"].shape[0]
    del it
    total = time.perf_counter() - t0
    return {"images_per_s": n / total, "data_wait_fraction": waited / total, "seconds": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    opts = dict(size=28, resize=28, channels=1, mean=[0.2860], std=[0.3530], workers=a.workers)
    t = time.perf_counter()
    paths = {"memory": load_dataset("fashion-mnist").train}
    t_mem = time.perf_counter() - t
    t = time.perf_counter()
    resident = load_dataset("imagefolder", root=a.folder, resident=True, **opts).train
    resident.example(1)
    resident._resident_pixels()
    t_res = time.perf_counter() - t
    paths["resident"] = resident
    paths["streamed"] = load_dataset("imagefolder", root=a.folder, resident=False, **opts).train
    rounds = {k: [] for k in paths}
    for r in range(a.rounds):
        for k, ds in paths.items():
            rounds[k].append(time_round(ds, a.batch_size, a.steps, a.seed, r))
            print(k, r, {m: round(v, 3) for m, v in rounds[k][-1].items()}, flush=True)
    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in rounds.items()}
    record = {
        "command": "python " + " ".join("FOLDER" if x == a.folder else x for x in sys.argv), "commit": _commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "hardware": f"{platform.machine()} CPU, {len(os.sched_getaffinity(0))} cores usable, torch "
                    f"{torch.__version__}, {a.threads} torch thread(s)",
        "settings": vars(a) | {"folder": "FOLDER", "train_images": {k: len(v) for k, v in paths.items()}},
        "load_seconds": {"memory": round(t_mem, 2), "resident_decode": round(t_res, 2)},
        "rounds": rounds, "median": med,
        "ratio_streamed_to_memory": med["streamed"]["images_per_s"] / med["memory"]["images_per_s"],
        "ratio_resident_to_memory": med["resident"]["images_per_s"] / med["memory"]["images_per_s"],
    }
    print(json.dumps({k: record[k] for k in ("median", "ratio_streamed_to_memory", "ratio_resident_to_memory",
                                             "load_seconds")}, indent=1))
    out = HERE / "results" / "image_loading.jsonl"
    out.parent.mkdir(exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
