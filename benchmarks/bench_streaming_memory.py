"""Peak memory of one training epoch from a JPEG folder: streamed (resident: false) vs
decoded into memory (resident: true).

    python benchmarks/bench_streaming_memory.py FOLDER [--images 30000] [--size 64] [--workers 1]

Writes FOLDER (``--images`` generated ``size``x``size`` RGB JPEGs in 10 class folders, plus
1000 test images) unless it exists, then trains convnet2 with cross-entropy for one epoch
on it twice, each in a fresh process: ``data.resident=false`` and ``data.resident=true``.
Reports each process's peak RSS (``ru_maxrss``) and the largest DataLoader worker's, beside
the decoded dataset's size (N * 3 * size^2 bytes). Appends one JSON record to
results/streaming_memory.jsonl.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def make_folder(root: Path, n: int, size: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("test", 1000)):
        for c in range(10):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            c = i % 10
            img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            img[..., c % 3] += np.uint8(60 + 15 * (c // 3))  # a class-dependent tint, learnable
            Image.fromarray(img).save(root / split / f"c{c}" / f"{i:06d}.jpg", quality=90)


def train_once(folder: str, resident: str, workers: int, size: int) -> dict:
    import time

    import torch

    from kdistill.config import load_config
    from kdistill.runs import run_experiment

    torch.set_num_threads(1)
    over = ["data.name=imagefolder", f"data.root={folder}", f"data.resident={resident}", f"data.workers={workers}",
            f"data.options={{size: {size}, resize: {size}, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}}",
            "data.batch_size=128", "data.eval_batch_size=256", "method={name: ce}", "train.epochs=1",
            "train.progress=false", "train.device=cpu", f"output.dir={tempfile.mkdtemp(prefix='kd_stream_mem_')}"]
    cfg = load_config(None, over, base={"student": {"model": "convnet2"}})
    t = time.perf_counter()
    res = run_experiment(cfg, log=lambda s: None)
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"resident": resident, "peak_rss_mib": round(kib / 1024, 1), "largest_worker_rss_mib": round(child / 1024, 1),
            "seconds": round(time.perf_counter() - t, 1), "train_time_s": res["train_time_s"],
            "test_acc": res["final"]["test"]["acc"], "train_images": res["dataset"]["train"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--images", type=int, default=30000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(train_once(a.folder, a.child, a.workers, a.size)))
        return
    root = Path(a.folder)
    if not root.exists():
        make_folder(root, a.images, a.size)
    runs = []
    for resident in ("false", "true"):
        out = subprocess.run([sys.executable, __file__, a.folder, "--size", str(a.size), "--workers", str(a.workers),
                              "--child", resident], capture_output=True, text=True, env=os.environ)
        if out.returncode:
            sys.exit(out.stderr)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(runs[-1], flush=True)
    n = runs[0]["train_images"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    import torch

    record = {"command": "python " + " ".join(sys.argv), "commit": commit,
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "hardware": f"{platform.machine()} CPU, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}",
              "decoded_dataset_mib": round(n * 3 * a.size * a.size / 2**20, 1), "runs": runs}
    (HERE / "results").mkdir(exist_ok=True)
    with open(HERE / "results" / "streaming_memory.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
