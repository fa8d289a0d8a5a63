"""Side-by-side CPU throughput of one KD training step: torchdistill vs kdistill.

How to run (torchdistill and torchvision are not kdistill dependencies; use a separate venv)::

    python3 -m venv tdvenv
    tdvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    tdvenv/bin/pip install torchdistill          # 1.1.5 here; it keeps torch 2.14.1
    tdvenv/bin/pip install -e .                  # kdistill
    tdvenv/bin/python benchmarks/bench_torchdistill.py --steps 50 --warmup 10 --repeat 3
    tdvenv/bin/python benchmarks/bench_torchdistill.py --steps 2 --warmup 1 --repeat 1 \\
        --out td_smoke.json --check                    # a quick smoke test plus sanity checks

Each round times torchdistill, then kdistill (``--repeat R`` rounds, interleaved:
torchdistill, kdistill, torchdistill, kdistill, ...). In every measurement ``--warmup``
optimizer steps run untimed, then ``--steps`` optimizer steps are timed with
``time.perf_counter``, data loading included; images/s = steps * batch / seconds. The
median over rounds is reported with every round's number, and one JSON record (command,
git commit, date, versions, host, threads, settings, numbers, ratio) is appended to
``--out`` (a JSON list, as ``bench_kd.py`` writes).

Shared by both sides
--------------------
* Teacher ``resnet32x4``, student ``resnet8x4`` from kdistill's zoo
  (``kdistill.models.create_model(name, 10, (1, 32, 32))``), each built right after
  ``torch.manual_seed(seed)``: both tools start from the same weights. The zoo's forward
  returns the logits tensor, which is what torchdistill's ``KDLoss`` reads at module path
  ``"."`` (the model's own output), so no wrapper module is needed.
* Data: Fashion-MNIST (``kdistill.data.load_dataset("fashion-mnist", pad_to=32)``:
  standardised, zero-padded 28 -> 32), the same random subset of ``--n-train`` images
  (``kdistill.data.subset(data, n, seed)``, as ``run_bench`` picks it); augmentation random
  crop 32 with padding 4 (zero fill) + horizontal flip p=0.5; batch 128, shuffled,
  incomplete last batch dropped.
* Loss: ``0.9 * T^2 * KL(p_t^T || p_s^T) + 0.1 * CE(student, label)``, T = 4.
  torchdistill: ``KDLoss(temperature=4, alpha=0.1, beta=0.9, reduction="batchmean")``
  (its ``alpha`` weighs the CE term, ``beta`` the KL term) as the only sub-term (weight 1)
  of a ``WeightedSumLoss``. kdistill: ``create("kd", ..., temperature=4)``, whose
  defaults are KD weight 0.9 and CE weight 0.1. ``--check`` verifies that both give the
  same loss on the same batch.
* fp32, CPU, teacher in eval mode under ``no_grad``; the student trains (BN in train mode).

torchdistill side (the way its example ``image_classification.py`` trains)
---------------------------------------------------------------------------
A ``torch.utils.data.Dataset`` that transforms each sample on its own with
torchvision v2 (``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``; with
``--td-data pil`` each sample is a PIL image first, then ``ToImage``, ``ToDtype``,
``Normalize``, the usual torchvision-dataset pipeline). ``get_distillation_box(teacher,
student, {"train": dataset}, train_config, device, device_ids=None, distributed=False,
lr_factor=1)`` builds everything from a ``train_config`` dict:

* ``train_data_loader``: ``dataset_id``, ``sampler: {class_or_func: RandomSampler,
  kwargs: {generator}}``, ``kwargs: {batch_size, num_workers (--workers), drop_last,
  persistent_workers when workers > 0}`` (torchdistill wraps the dataset so that a
  batch is ``(inputs, targets, supp_dict)``);
* ``teacher``: ``forward_proc: forward_batch_only``, ``requires_grad: False`` (frozen,
  run under ``no_grad``); ``student``: ``forward_proc: forward_batch_only``;
* ``optimizer``: ``{key: SGD, kwargs: {lr: 0.05, momentum: 0.9, weight_decay: 5e-4}}``;
* ``criterion``: ``{key: WeightedSumLoss, kwargs: {sub_terms: {kd: {criterion: {key:
  KDLoss, kwargs: ...}, weight: 1.0}}}}``.

The loop per epoch: ``box.pre_epoch_process(epoch=e)``, then per batch ``x.to(device)``,
``y.to(device)``, ``loss = box.forward_process(x, y, supp_dict)``,
``box.post_forward_process(loss=loss)`` (backward, ``optimizer.step()``,
``optimizer.zero_grad()``), and ``box.post_epoch_process()`` at the epoch's end. The
example script's per-step ``loss.item()`` logging is left out (kdistill's timed step does
not log either). torchdistill itself never calls ``teacher.eval()`` (its example leaves
the teacher in the mode it was loaded in, train mode for a fresh module); this script
calls ``teacher.eval()`` before building the box, so both tools run the teacher's BN
with running statistics.

kdistill side
-------------
``--kdistill-runner run_bench`` (default): ``kdistill.bench.run_bench(teacher, student,
"fashion-mnist", batch_size, steps, warmup, device="cpu", n_train, paths=--kd-paths,
repeat=1, seed)``, i.e. kdistill's own benchmark of its training step:

* ``kd_live``: the fast path -- the whole subset as one tensor, batches from a
  permutation (``DeviceLoader``), vectorised augmentation of the whole batch at once
  (``Augment(4, flip=True)``: pad + gather, flip via ``torch.where``), NHWC
  (``channels_last``) networks and inputs, the ``Distiller`` forward (teacher under
  ``no_grad`` + student + KD and CE terms), backward, ``SGD.step``,
  ``zero_grad(set_to_none=True)``;
* ``naive`` (reported for reference): kdistill's model of the common loop -- a
  ``DataLoader`` over the CPU tensors, the same augmentation applied per batch, NCHW.

``run_bench`` builds its optimizer itself: SGD lr 0.01, momentum 0.9, **weight decay 0**
(no knob). Learning rate does not change the cost; weight decay adds one
add-per-parameter in the step (about 1.2 M student parameters, tiny next to the convs).
``--kdistill-runner loop`` times the same fast path assembled here from kdistill's
public pieces (``DeviceLoader``, ``Augment``, ``methods.create``, ``make_optimizer``)
with exactly SGD lr 0.05, momentum 0.9, weight decay 5e-4, if that difference matters.

What differs (by design: this is what each tool does)
-----------------------------------------------------
* torchdistill augments sample by sample in Python (one crop + flip call per image,
  then ``default_collate`` stacking 128 tensors), in the main process with
  ``--workers 0`` or in DataLoader workers (which share this machine's cores with the
  training threads); kdistill augments a batch with a few tensor ops.
* kdistill runs convolutions in NHWC (``channels_last``), torchdistill in NCHW, the
  PyTorch default that its configs keep.
* torchdistill's forward path goes through its I/O-dict machinery (forward hooks
  registry, ``extract_io_dict``), a few Python calls per step; no hooks are set here.
* Random streams differ (crop offsets, flips, batch order), so the two tools do not
  see identical batches during timing; the sample set, shapes and augmentation family
  are the same.
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
from collections.abc import Callable, Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

INSTALL_HINT = """\
This benchmark needs torchdistill and torchvision next to kdistill. Make a separate venv:

    python3 -m venv tdvenv
    tdvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    tdvenv/bin/pip install torchdistill
    tdvenv/bin/pip install -e .
    tdvenv/bin/python benchmarks/bench_torchdistill.py ..."""

TEMPERATURE = 4.0
KD_WEIGHT, CE_WEIGHT = 0.9, 0.1
SGD = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}


def _missing_packages() -> list[str]:
    """Import torchvision, torchdistill and kdistill; one line per package that fails."""
    problems = []
    for name in ("torch", "torchvision", "torchdistill", "kdistill"):
        try:
            __import__(name)
        except Exception as e:  # noqa: BLE001 - a broken install raises more than ImportError
            msg = str(e).strip().splitlines()
            problems.append(f"  {name}: {type(e).__name__}: {msg[-1] if msg else ''}")
    return problems


def _commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------- shared pieces


def build_model(name: str, seed: int):
    """A zoo model initialised right after ``torch.manual_seed(seed)``: the same weights
    whichever tool asks and in whatever order."""
    import torch

    from kdistill.models import create_model

    torch.manual_seed(seed)
    return create_model(name, 10, (1, 32, 32))


def load_subset(n_train: int, seed: int, normalize: bool = True):
    """The benchmark's training images: the subset ``run_bench`` draws (same seed, same
    indices)."""
    from kdistill.data import load_dataset, subset

    data = load_dataset("fashion-mnist", pad_to=32, normalize=normalize).train
    return subset(data, n_train, seed=seed) if n_train else data


def _timed(step: Callable[[object], object], batches: Iterator, warmup: int, steps: int) -> tuple[float, float]:
    """``(seconds of the timed steps, seconds of the warm-up)``; batch fetching included."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step(next(batches))
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    return time.perf_counter() - t0, warm


# --------------------------------------------------------------------------- torchdistill


def make_td_dataset(kind: str, n_train: int, seed: int):
    """A map-style dataset that augments one sample per ``__getitem__`` with torchvision v2.

    ``tensor``: the standardised 1x32x32 float tensors kdistill trains on, cropped (zero
    fill, the same as kdistill's shift) and flipped per sample. ``pil``: the same images as
    8-bit PIL images, cropped and flipped, then converted and standardised per sample.
    """
    import numpy as np
    import torch
    from PIL import Image
    from torch.utils.data import Dataset
    from torchvision.transforms import v2

    from kdistill.data.datasets import FASHION_MEAN, FASHION_STD

    augment = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(p=0.5)]

    class FashionSubset(Dataset):
        def __init__(self, samples, targets, transform):
            self.samples, self.targets, self.transform = samples, targets, transform

        def __len__(self) -> int:
            return len(self.targets)

        def __getitem__(self, i):
            return self.transform(self.samples[i]), self.targets[i]

    if kind == "tensor":
        data = load_subset(n_train, seed)
        return FashionSubset(list(data.x), data.y.tolist(), v2.Compose(augment))
    raw = load_subset(n_train, seed, normalize=False)
    pixels = (raw.x[:, 0] * 255).round().to(torch.uint8).numpy()
    images = [Image.fromarray(np.ascontiguousarray(p)) for p in pixels]
    transform = v2.Compose(
        [*augment, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([FASHION_MEAN], [FASHION_STD])]
    )
    return FashionSubset(images, raw.y.tolist(), transform)


def td_train_config(batch_size: int, workers: int, seed: int) -> dict:
    """torchdistill's ``train_config`` for single-stage KD (built fresh: the box edits it)."""
    import torch
    from torch.utils.data import RandomSampler

    loader_kwargs = {"batch_size": batch_size, "num_workers": workers, "drop_last": True}
    if workers > 0:
        loader_kwargs["persistent_workers"] = True
    module_io = {
        "student_module_path": ".",
        "student_module_io": "output",
        "teacher_module_path": ".",
        "teacher_module_io": "output",
    }
    return {
        "num_epochs": 1,  # the loop below runs as many epochs as it needs
        "train_data_loader": {
            "dataset_id": "train",
            "sampler": {"class_or_func": RandomSampler, "kwargs": {"generator": torch.Generator().manual_seed(seed)}},
            "kwargs": loader_kwargs,
        },
        "teacher": {
            "forward_proc": "forward_batch_only",
            "sequential": [],
            "frozen_modules": [],
            "requires_grad": False,
        },
        "student": {
            "forward_proc": "forward_batch_only",
            "sequential": [],
            "frozen_modules": [],
            "requires_grad": True,
        },
        "optimizer": {"key": "SGD", "kwargs": dict(SGD)},
        "criterion": {
            "key": "WeightedSumLoss",
            "kwargs": {
                "sub_terms": {
                    "kd": {
                        "criterion": {
                            "key": "KDLoss",
                            "kwargs": {
                                **module_io,
                                "temperature": TEMPERATURE,
                                "alpha": CE_WEIGHT,
                                "beta": KD_WEIGHT,
                                "reduction": "batchmean",
                            },
                        },
                        "weight": 1.0,
                    }
                }
            },
        },
    }


def td_box(args, dataset):
    """A ``DistillationBox`` over fresh, identically seeded networks; the teacher in eval mode."""
    import torch
    from torchdistill.core.distillation import get_distillation_box

    device = torch.device("cpu")
    teacher = build_model(args.teacher, args.seed).to(device).eval()
    student = build_model(args.student, args.seed).to(device)
    return get_distillation_box(
        teacher,
        student,
        {"train": dataset},
        td_train_config(args.batch_size, args.workers, args.seed),
        device,
        None,
        False,
        1,
    )


def td_batches(box) -> Iterator[tuple]:
    """Batches as torchdistill's example loop sees them, epoch after epoch."""
    epoch = 0
    while True:
        box.pre_epoch_process(epoch=epoch)
        for sample_batch, targets, supp_dict in box.train_data_loader:
            yield sample_batch.to(box.device), targets.to(box.device), supp_dict
        box.post_epoch_process()
        epoch += 1


def td_step(box) -> Callable[[tuple], object]:
    def step(batch):
        x, y, supp = batch
        loss = box.forward_process(x, y, supp)
        box.post_forward_process(loss=loss)
        return loss

    return step


def run_torchdistill(args, dataset) -> dict:
    box = td_box(args, dataset)
    batches = td_batches(box)
    seconds, warm = _timed(td_step(box), batches, args.warmup, args.steps)
    batches.close()
    return {
        "images_per_s": args.steps * args.batch_size / seconds,
        "step_ms": 1e3 * seconds / args.steps,
        "warmup_s": round(warm, 3),
    }


# --------------------------------------------------------------------------- kdistill


def run_kdistill_bench(args) -> dict[str, dict]:
    from kdistill.bench import run_bench

    result = run_bench(
        args.teacher,
        args.student,
        "fashion-mnist",
        batch_size=args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
        device="cpu",
        n_train=args.n_train,
        temperature=TEMPERATURE,
        paths=tuple(args.kd_paths),
        repeat=1,
        seed=args.seed,
    )
    out = {}
    for name, r in result["paths"].items():
        out[name] = {
            "images_per_s": r["images_per_s"],
            "step_ms": r["step_ms"],
            "warmup_s": r["warmup_s"],
            "peak_memory_bytes": r["peak_memory_bytes"],
        }
    out["_config"] = result["config"]
    return out


def kd_fast_parts(args, data, channels_last: bool = True):
    """kdistill's fast live-KD step from its public pieces, with this script's SGD settings."""
    import torch

    from kdistill.config import TrainConfig
    from kdistill.data import Augment, DeviceLoader
    from kdistill.engine.trainer import make_optimizer
    from kdistill.methods import create
    from kdistill.teachers import ModuleTeacher

    dev = torch.device("cpu")
    student = build_model(args.student, args.seed).to(dev)
    teacher = ModuleTeacher(build_model(args.teacher, args.seed).to(dev), 10)
    if channels_last:
        student.to(memory_format=torch.channels_last)
        teacher.module.to(memory_format=torch.channels_last)
    model = create("kd", student, teacher, temperature=TEMPERATURE)  # 0.9 KD + 0.1 CE
    model.to(dev).train()
    opt = make_optimizer(model.trainable_parameters(), TrainConfig(optimizer="sgd", **SGD), dev)
    loader = DeviceLoader(
        data, args.batch_size, shuffle=True, seed=args.seed, device=dev, augment=Augment(4, True), drop_last=True
    )

    def batches():
        epoch = 0
        while True:
            yield from loader.iterate(epoch)
            epoch += 1

    def step(batch):
        if channels_last:
            batch["x"] = batch["x"].contiguous(memory_format=torch.channels_last)
        loss = model(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return model, step, batches()


def run_kdistill_loop(args, data) -> dict[str, dict]:
    _, step, batches = kd_fast_parts(args, data)
    seconds, warm = _timed(step, batches, args.warmup, args.steps)
    return {
        "kd_live": {
            "images_per_s": args.steps * args.batch_size / seconds,
            "step_ms": 1e3 * seconds / args.steps,
            "warmup_s": round(warm, 3),
        }
    }


# --------------------------------------------------------------------------- checks


def run_checks(args, dataset, data) -> dict:
    """Same loss from both tools on one batch; a finite first loss and moving weights."""
    import torch

    out: dict = {}
    x, y = data.x[: args.batch_size], data.y[: args.batch_size]

    # 1. both losses on the same un-augmented batch, from the same initial weights
    box = td_box(args, dataset)
    box.pre_epoch_process(epoch=0)
    td_loss = box.forward_process(x, y, {}).item()
    from kdistill.methods import create
    from kdistill.teachers import ModuleTeacher

    kd = create(
        "kd",
        build_model(args.student, args.seed),
        ModuleTeacher(build_model(args.teacher, args.seed), 10),
        temperature=TEMPERATURE,
    ).train()
    kd_loss = kd({"x": x, "y": y, "index": torch.arange(len(y))})["loss"].item()
    out["same_batch_loss"] = {
        "torchdistill": td_loss,
        "kdistill": kd_loss,
        "abs_diff": abs(td_loss - kd_loss),
        "agree": abs(td_loss - kd_loss) <= 1e-4 * max(1.0, abs(kd_loss)),
    }

    # 2. torchdistill: first loader batch, one step
    box = td_box(args, dataset)
    student = box.student_model
    teacher = box.teacher_model
    s_before = [p.detach().clone() for p in student.parameters()]
    t_before = [t.detach().clone() for t in (*teacher.parameters(), *teacher.buffers())]
    batches = td_batches(box)
    loss = td_step(box)(next(batches))
    batches.close()
    s_change = max((p.detach() - b).abs().max().item() for p, b in zip(student.parameters(), s_before))
    t_change = max(
        (p.detach() - b).abs().max().item() for p, b in zip((*teacher.parameters(), *teacher.buffers()), t_before)
    )
    out["torchdistill_first_step"] = {
        "loss": loss.item(),
        "loss_finite": bool(torch.isfinite(loss).item()),
        "student_max_abs_weight_change": s_change,
        "student_changed": s_change > 0,
        "teacher_max_abs_change": t_change,
        "teacher_unchanged": t_change == 0,
        "teacher_training_mode": teacher.training,
    }

    # 3. kdistill's fast step (the loop runner's), one step
    model, step, batches = kd_fast_parts(args, data)
    s_before = [p.detach().clone() for p in model.student.parameters()]
    loss = step(next(batches))
    s_change = max((p.detach() - b).abs().max().item() for p, b in zip(model.student.parameters(), s_before))
    out["kdistill_first_step"] = {
        "loss": loss.item(),
        "loss_finite": bool(torch.isfinite(loss).item()),
        "student_max_abs_weight_change": s_change,
        "student_changed": s_change > 0,
    }
    return out


def check_ok(checks: dict) -> bool:
    td, kd = checks["torchdistill_first_step"], checks["kdistill_first_step"]
    return (
        checks["same_batch_loss"]["agree"]
        and td["loss_finite"]
        and td["student_changed"]
        and td["teacher_unchanged"]
        and kd["loss_finite"]
        and kd["student_changed"]
    )


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="resnet32x4")
    ap.add_argument("--student", default="resnet8x4")
    ap.add_argument("--n-train", type=int, default=4096, help="training images used (a seeded random subset)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50, help="timed optimizer steps per measurement")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps before them")
    ap.add_argument("--repeat", type=int, default=3, help="rounds, interleaved torchdistill, kdistill, ...")
    ap.add_argument("--workers", type=int, default=0, help="torchdistill DataLoader num_workers")
    ap.add_argument(
        "--td-data",
        choices=["tensor", "pil"],
        default="tensor",
        help="torchdistill samples: float tensors (kdistill's pixels) or PIL images",
    )
    ap.add_argument("--kdistill-runner", choices=["run_bench", "loop"], default="run_bench")
    ap.add_argument("--kd-paths", default="kd_live,naive", help="run_bench paths (kd_live first: the headline)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check", action="store_true", help="sanity checks before timing (loss agreement, step)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "bench_torchdistill_cpu.json")
    args = ap.parse_args(argv)
    args.kd_paths = [p for p in args.kd_paths.split(",") if p]
    for name in ("steps", "repeat", "batch_size", "n_train"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or args.workers < 0:
        ap.error("--warmup and --workers must be >= 0")
    if args.n_train < args.batch_size:
        ap.error("--n-train must hold at least one full batch")
    if args.kdistill_runner == "run_bench" and "kd_live" not in args.kd_paths:
        ap.error("--kd-paths must include kd_live (the number compared with torchdistill)")

    problems = _missing_packages()
    if problems:
        print("error: cannot import:\n" + "\n".join(problems) + "\n\n" + INSTALL_HINT, file=sys.stderr)
        return 2

    import torch
    import torchdistill
    import torchvision

    import kdistill
    from kdistill.errors import KdistillError

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        dataset = make_td_dataset(args.td_data, args.n_train, args.seed)
        data = load_subset(args.n_train, args.seed)
        checks = None
        if args.check:
            checks = run_checks(args, dataset, data)
            print(json.dumps(checks, indent=1))
            print("checks:", "ok" if check_ok(checks) else "FAILED")
        rounds: dict[str, list[dict]] = {}
        kd_config = None
        for rnd in range(args.repeat):
            r = run_torchdistill(args, dataset)
            rounds.setdefault("torchdistill", []).append(r)
            print(
                f"round {rnd + 1}/{args.repeat}  torchdistill       {r['images_per_s']:9.1f} img/s"
                f"  {r['step_ms']:8.1f} ms/step",
                flush=True,
            )
            kd = run_kdistill_bench(args) if args.kdistill_runner == "run_bench" else run_kdistill_loop(args, data)
            kd_config = kd.pop("_config", kd_config)
            for name, r in kd.items():
                rounds.setdefault(f"kdistill/{name}", []).append(r)
                print(
                    f"round {rnd + 1}/{args.repeat}  kdistill {name:9s} {r['images_per_s']:9.1f} img/s"
                    f"  {r['step_ms']:8.1f} ms/step",
                    flush=True,
                )
    except KdistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code

    tools = {}
    for name, rs in rounds.items():
        ips = statistics.median(r["images_per_s"] for r in rs)
        tools[name] = {
            "median_images_per_s": round(ips, 2),
            "median_step_ms": round(1e3 * args.batch_size / ips, 2),
            "rounds_images_per_s": [round(r["images_per_s"], 2) for r in rs],
            "warmup_s": [r["warmup_s"] for r in rs],
        }
    td_ips = tools["torchdistill"]["median_images_per_s"]
    # median images/s of each kdistill path over torchdistill's median
    ratios = {name: round(t["median_images_per_s"] / td_ips, 4) for name, t in tools.items() if name != "torchdistill"}
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    record = {
        "command": " ".join(
            [
                Path(sys.executable).as_posix(),
                "benchmarks/bench_torchdistill.py",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        ),
        "commit": _commit(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "torchdistill": getattr(torchdistill, "__version__", _version("torchdistill")),
            "kdistill": getattr(kdistill, "__version__", _version("kdistill")),
        },
        "host": {
            "name": platform.node(),
            "cpu": _cpu_model(),
            "cpus_usable": affinity,
            "platform": platform.platform(),
        },
        "threads": {
            "intra_op": torch.get_num_threads(),
            "inter_op": torch.get_num_interop_threads(),
            "torchdistill_workers": args.workers,
        },
        "settings": {
            "teacher": args.teacher,
            "student": args.student,
            "dataset": "fashion-mnist (pad_to=32)",
            "n_train": args.n_train,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "warmup": args.warmup,
            "repeat": args.repeat,
            "seed": args.seed,
            "precision": "fp32",
            "device": "cpu",
            "augment": "random crop 32 pad 4 (zero fill) + horizontal flip",
            "loss": f"{KD_WEIGHT} * T^2 * KL + {CE_WEIGHT} * CE, T={TEMPERATURE}",
            "torchdistill": {
                "data": args.td_data,
                "optimizer": {"SGD": SGD},
                "layout": "NCHW",
                "teacher": "eval(), requires_grad False, no_grad",
            },
            "kdistill": {
                "runner": args.kdistill_runner,
                "paths": args.kd_paths if args.kdistill_runner == "run_bench" else ["kd_live"],
                "optimizer": {"SGD": {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0}}
                if args.kdistill_runner == "run_bench"
                else {"SGD": SGD},
                "layout": "NHWC (channels_last) on kd_live, NCHW on naive",
                "run_bench_config": kd_config,
            },
        },
        "tools": tools,
        "ratio_vs_torchdistill": ratios,
        "checks": checks,
    }
    records = []
    if args.out.is_file():
        try:
            records = json.loads(args.out.read_text())
        except ValueError:
            print(f"error: {args.out} is not valid JSON; move it aside and rerun.", file=sys.stderr)
            return 2
        if not isinstance(records, list):
            print(f"error: {args.out} does not hold a JSON list; move it aside and rerun.", file=sys.stderr)
            return 2
    records.append(record)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(records, indent=1) + "\n")
    os.replace(tmp, args.out)

    print()
    print(f"{'tool':22s} {'median img/s':>12s} {'ms/step':>9s} {'x torchdistill':>15s}  rounds img/s")
    for name, t in tools.items():
        x = "1.00" if name == "torchdistill" else f"{ratios[name]:.2f}"
        rs = ", ".join(f"{v:.1f}" for v in t["rounds_images_per_s"])
        print(f"{name:22s} {t['median_images_per_s']:12.1f} {t['median_step_ms']:9.1f} {x:>15s}  [{rs}]")
    print(
        f"{args.steps} timed steps x {args.batch_size} after {args.warmup} warm-up, {args.repeat} round(s), "
        f"{torch.get_num_threads()} threads, torchdistill workers {args.workers}"
    )
    print(f"appended to {args.out}")
    if checks is not None and not check_ok(checks):
        print("error: sanity checks failed (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
