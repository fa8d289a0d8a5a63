"""Peak memory of one training epoch from a JPEG folder: streamed (resident: false) vs
decoded into memory (resident: true).

    python benchmarks/bench_streaming_memory.py FOLDER [--images 30000] [--size 64] [--workers 1]
        [--modes false,true] [--fkd-views K]

Writes FOLDER (``--images`` generated ``size``x``size`` RGB JPEGs in 10 class folders, plus
1000 test images) unless it exists, then trains convnet2 with cross-entropy for one epoch
on it twice, each in a fresh process: ``data.resident=false`` and ``data.resident=true``.
Reports each process's peak RSS (``ru_maxrss``) and the largest DataLoader worker's, beside
the decoded dataset's size (N * 3 * size^2 bytes). Appends one JSON record to
results/streaming_memory.jsonl.

``--modes false`` runs the streamed epoch only (a folder whose decoded images exceed the
memory budget). ``--fkd-views K`` then writes an FKD-style teacher cache of the folder (K
RandomResizedCrop + flip views per image, the teacher's top-10 outputs in fp16; the teacher
is the convnet2 the streamed epoch trained) and trains a fresh convnet2 for one epoch with
KD replaying it (no teacher forward), each in a fresh process with its peak RSS.
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


RECIPE = "data.recipe={random_resized_crop: {scale: [0.35, 1.0]}, flip: 0.5}"


def _overrides(folder: str, resident: str, workers: int, size: int) -> list[str]:
    return ["data.name=imagefolder", f"data.root={folder}", f"data.resident={resident}", f"data.workers={workers}",
            f"data.options={{size: {size}, resize: {size}, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}}",
            "data.batch_size=128", "data.eval_batch_size=256", "train.epochs=1",
            "train.progress=false", "train.device=cpu", f"output.dir={tempfile.mkdtemp(prefix='kd_stream_mem_')}"]


def _peaks() -> dict:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"peak_rss_mib": round(kib / 1024, 1), "largest_worker_rss_mib": round(child / 1024, 1)}


def train_once(folder: str, resident: str, workers: int, size: int) -> dict:
    import time

    import torch

    from kdistill.config import load_config
    from kdistill.runs import run_experiment

    torch.set_num_threads(1)
    cfg = load_config(None, _overrides(folder, resident, workers, size) + ["method={name: ce}"],
                      base={"student": {"model": "convnet2"}})
    run_dir = Path(tempfile.mkdtemp(prefix="kd_stream_run_")) / "run"
    t = time.perf_counter()
    res = run_experiment(cfg, run_dir, log=lambda s: None)
    return {"resident": resident, **_peaks(), "seconds": round(time.perf_counter() - t, 1),
            "train_time_s": res["train_time_s"], "test_acc": res["final"]["test"]["acc"],
            "train_images": res["dataset"]["train"], "run_dir": str(run_dir)}


def fkd_cache(folder: str, workers: int, size: int, teacher_ckpt: str, cache: str, views: int) -> dict:
    """Write the FKD-style cache in this process: K views per image, top-10 fp16."""
    import time

    import torch

    from kdistill.config import load_config
    from kdistill.runs.caching import cache_from_config

    torch.set_num_threads(1)
    over = _overrides(folder, "false", workers, size) + [RECIPE, "method={name: kd}"]
    cfg = load_config(None, over, base={"student": {"model": "convnet2"},
                                         "teacher": {"model": "convnet2", "checkpoint": teacher_ckpt}})
    t = time.perf_counter()
    meta = cache_from_config(cfg, cache, topk=10, dtype="fp16", views=views, log=lambda s: None)
    disk = sum(f.stat().st_size for f in Path(cache).rglob("*") if f.is_file())
    return {"step": "cache", "views": views, **_peaks(), "seconds": round(time.perf_counter() - t, 1),
            "cache_bytes": disk, "samples": meta["dataset"]["length"]}


def fkd_replay(folder: str, workers: int, size: int, cache: str) -> dict:
    """One KD epoch of a fresh convnet2 from the cache (no teacher model is built)."""
    import time

    import torch

    from kdistill.config import load_config
    from kdistill.runs import run_experiment

    torch.set_num_threads(1)
    over = _overrides(folder, "false", workers, size) + [RECIPE, "method={name: kd}"]
    cfg = load_config(None, over, base={"student": {"model": "convnet2"}, "teacher": {"cache": cache}})
    t = time.perf_counter()
    res = run_experiment(cfg, log=lambda s: None)
    return {"step": "replay", **_peaks(), "seconds": round(time.perf_counter() - t, 1),
            "train_time_s": res["train_time_s"], "test_acc": res["final"]["test"]["acc"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--images", type=int, default=30000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--modes", default="false,true", help="data.resident values to run, in order")
    ap.add_argument("--fkd-views", type=int, default=0, help="then cache K views and replay them (0: skip)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-args", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        extra = a.child_args.split("|") if a.child_args else []
        if a.child == "cache":
            print(json.dumps(fkd_cache(a.folder, a.workers, a.size, extra[0], extra[1], int(extra[2]))))
        elif a.child == "replay":
            print(json.dumps(fkd_replay(a.folder, a.workers, a.size, extra[0])))
        else:
            print(json.dumps(train_once(a.folder, a.child, a.workers, a.size)))
        return
    root = Path(a.folder)
    if not root.exists():
        t0 = __import__("time").perf_counter()
        make_folder(root, a.images, a.size)
        print(f"wrote {a.images} + 1000 JPEGs in {__import__('time').perf_counter() - t0:.0f} s", flush=True)

    def child(mode: str, extra: str = "") -> dict:
        out = subprocess.run([sys.executable, __file__, a.folder, "--size", str(a.size), "--workers", str(a.workers),
                              "--child", mode, "--child-args", extra], capture_output=True, text=True, env=os.environ)
        if out.returncode:
            sys.exit(out.stderr)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(r, flush=True)
        return r

    runs = [child(m) for m in a.modes.split(",")]
    fkd = []
    if a.fkd_views:
        ckpt = Path(runs[0]["run_dir"]) / "model.safetensors"
        cache = tempfile.mkdtemp(prefix="kd_fkd_cache_") + "/cache"
        fkd = [child("cache", f"{ckpt}|{cache}|{a.fkd_views}"), child("replay", cache)]
    n = runs[0]["train_images"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    import torch

    for r in runs:
        r.pop("run_dir", None)  # a temporary folder of this machine
    argv = ["FOLDER" if x == a.folder else x for x in sys.argv]
    record = {"command": "python " + " ".join(argv), "commit": commit,
              "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "hardware": f"{platform.machine()} CPU, {len(os.sched_getaffinity(0))} cores, torch {torch.__version__}",
              "decoded_dataset_mib": round(n * 3 * a.size * a.size / 2**20, 1), "runs": runs,
              **({"fkd": fkd} if fkd else {})}
    (HERE / "results").mkdir(exist_ok=True)
    with open(HERE / "results" / "streaming_memory.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
