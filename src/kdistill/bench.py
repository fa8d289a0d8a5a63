"""Training throughput: what the fast path buys, measured the same way for every path.

``run_bench`` times optimizer steps (forward, backward, step) of one student on one
dataset along four paths:

* ``student``: the student alone (hard labels), fast path;
* ``kd_live``: Hinton KD with the teacher run on every batch, fast path;
* ``kd_cached``: Hinton KD reading the teacher's outputs from a cache of augmented views
  (:mod:`kdistill.cache`), fast path;
* ``naive``: KD with a live teacher the common way, as the reference: a
  ``torch.utils.data.DataLoader`` over CPU tensors, augmentation per batch on the CPU,
  a copy to the device per batch, fp32, no compile, no channels_last;
* ``teacher``: the teacher's forward pass alone, as the live-KD path runs it (inference
  mode, same batches, precision, layout and compilation): the cost a live teacher adds.

:func:`check_targets` turns the numbers into the issue's three verdicts: live KD against
the naive path (5x on a GPU; not slower on a CPU), cached KD against the student alone
(0.9x), and live KD against student + teacher forward (at most 10% over their sum).

The fast path is airbench's recipe (Keller Jordan, github.com/KellerJordan/cifar10-airbench):
the whole dataset on the device, batches from an on-device permutation, vectorised
augmentation on the device, bf16 autocast on CUDA, ``channels_last``, optional
``torch.compile``, a fused optimizer. Warm-up steps (and compilation) are excluded from
the timing; GPU time is measured with CUDA events, CPU time with ``perf_counter``. The
networks are freshly initialised: throughput does not depend on what they learnt.
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .devices import peak_memory_bytes, reset_peak_memory  # noqa: F401  (re-exported)

PATHS = ("student", "kd_live", "kd_cached", "naive", "teacher")

#: live KD / naive images/s wanted on a GPU (the issue's target); on a CPU: not slower (1.0)
LIVE_VS_NAIVE_GPU = 5.0
#: cached KD / student-only images/s wanted
CACHED_VS_STUDENT = 0.9
#: live KD step time may exceed student step + teacher forward by this share
LIVE_OVERHEAD = 0.10


#: torch.compile modes that capture CUDA graphs: each step must be marked
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


def _timed(
    step: Callable[[dict], None], batches: Iterator[dict], warmup: int, steps: int, device: torch.device
) -> tuple[float, float]:
    """``(seconds of the timed steps, seconds of the warm-up)``."""
    cuda = device.type == "cuda"
    t0 = time.perf_counter()
    for _ in range(warmup):
        step(next(batches))
    if cuda:
        torch.cuda.synchronize(device)
    warm = time.perf_counter() - t0
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step(next(batches))
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, warm
    t0 = time.perf_counter()
    for _ in range(steps):
        step(next(batches))
    return time.perf_counter() - t0, warm


def _forever(loader) -> Iterator[dict]:
    epoch = 0
    while True:
        yield from loader.iterate(epoch)
        epoch += 1


def _naive_batches(data, batch_size: int, augment, device: torch.device, seed: int) -> Iterator[dict]:
    """The reference data path: DataLoader over CPU tensors, CPU augmentation, a copy per batch."""
    from torch.utils.data import DataLoader, TensorDataset

    every = data.take(torch.arange(len(data)))  # the arrays on the CPU, as a reference loop holds them
    ds = TensorDataset(every["x"], every["y"], every["index"])
    g = torch.Generator().manual_seed(seed)
    while True:
        for x, y, idx in DataLoader(ds, batch_size=batch_size, shuffle=True, generator=g, drop_last=True):
            if augment is not None:
                x = augment.apply(x, augment.params(x.shape[0], x.dim(), g))
            yield {"x": x.to(device), "y": y.to(device), "index": idx.to(device)}


def run_bench(
    teacher: str = "resnet32x4",
    student: str = "resnet8x4",
    dataset: str = "fashion-mnist",
    data_options: dict[str, Any] | None = None,
    batch_size: int = 128,
    steps: int = 50,
    warmup: int = 10,
    device: str = "auto",
    precision: str = "auto",
    compile: bool = False,
    compile_mode: str = "default",
    compile_scope: str = "networks",
    channels_last: bool | None = None,
    augment: bool = True,
    cache_views: int = 4,
    n_train: int | None = None,
    temperature: float = 4.0,
    paths: tuple[str, ...] = PATHS,
    repeat: int = 1,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time ``steps`` training steps along each path (see the module docstring).

    Args:
        teacher, student: model names (``kdistill list models``).
        dataset: dataset name; ``data_options`` are its options (default for
            ``fashion-mnist``: ``pad_to=32``, the CIFAR-size input of the resnet zoo).
        batch_size: samples per step.
        steps: timed steps per path; ``warmup`` untimed steps before them (compilation,
            allocator and cuDNN autotuning happen there).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda[:N]``.
        precision: ``auto`` (bf16 on CUDA, fp32 on CPU), ``bf16`` or ``fp32``; the naive
            path is always fp32.
        compile: ``torch.compile`` student and teacher on the fast paths.
        compile_mode: torch.compile's mode; ``"reduce-overhead"`` adds CUDA graphs.
        compile_scope: ``"networks"`` compiles student and teacher networks one by one;
            ``"step"`` compiles each training path's whole forward (teacher, student and
            loss in one graph), as ``train.compile_scope: step`` does.
        channels_last: NHWC memory layout on the fast paths (default: on, with images, on every
            device; the naive path keeps NCHW).
        augment: shift-by-4 + horizontal flip on image inputs (the CIFAR recipe).
        cache_views: augmented views per sample in the ``kd_cached`` path's cache.
        n_train: use only this many training samples (a quick run).
        temperature: KD temperature (does not change the cost).
        paths: which of :data:`PATHS` to run.
        repeat: measure every path this many times, round-robin (path 1, 2, ..., 1, 2, ...),
            and report the median images/s of the rounds (each round's number is kept in
            ``rounds_images_per_s``): on a shared, noisy machine the ratios between paths
            then come from interleaved measurements, not from one unlucky window.
        seed: seed of initialisation, data order and augmentation.
        log: prints one line per path.

    Returns:
        ``{"paths": {name: {"images_per_s", "step_ms", "peak_memory_bytes", "warmup_s"}},
        "cache": {...}, "config": {...}, "device", "torch", "host", ...}``.
    """
    from .cache import CachedTeacher, cache_teacher, describe
    from .data import Augment, load_dataset
    from .devices import resolve_device
    from .engine.trainer import make_optimizer
    from .errors import ConfigError
    from .methods import create
    from .models import create_model
    from .teachers import ModuleTeacher

    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise ConfigError(f"Unknown bench path(s) {unknown}; choose from {list(PATHS)}.")
    if compile_scope not in ("networks", "step"):
        raise ConfigError(f"bench compile_scope must be networks or step, got {compile_scope!r}.")
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"bench precision must be auto, fp32 or bf16, got {precision!r}.")
    for name, v in (("batch_size", batch_size), ("steps", steps), ("repeat", repeat)):
        if v < 1:
            raise ConfigError(f"{name} must be at least 1, got {v}.")
    dev = resolve_device(device)
    if data_options is None:
        data_options = {"pad_to": 32} if dataset == "fashion-mnist" else {}
    data = load_dataset(dataset, **data_options).train
    if n_train:
        data = data.subset(n_train, seed=seed)
    images = len(data.input_shape) == 3
    if channels_last is None:
        channels_last = images
    bf16 = precision == "bf16" or (precision == "auto" and dev.type == "cuda")
    aug = Augment(4, True) if augment and images else None
    k, shape = data.num_classes, data.input_shape

    def build(name: str) -> nn.Module:
        torch.manual_seed(seed)
        return create_model(name, k, shape).to(dev)

    def live_teacher(fast: bool, alone: bool = False) -> ModuleTeacher:
        t = ModuleTeacher(build(teacher), k)
        if fast and channels_last:
            t.module.to(memory_format=torch.channels_last)
        if fast and compile and (alone or compile_scope == "networks"):
            t.module.compile(mode=compile_mode)
        return t

    def begin(batch: dict, cl: bool) -> None:
        """What every timed step does first: mark a CUDA-graph step, lay the batch out."""
        if compile and compile_mode in CUDAGRAPH_MODES:
            torch.compiler.cudagraph_mark_step_begin()
        if cl and batch["x"].dim() == 4:
            batch["x"] = batch["x"].contiguous(memory_format=torch.channels_last)

    def fast_step(model: nn.Module, opt: torch.optim.Optimizer, fp32: bool = False) -> Callable[[dict], None]:
        amp = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 and not fp32 else nullcontext()
        cl = channels_last and not fp32

        def step(batch: dict) -> None:
            begin(batch, cl)
            with amp:
                loss = model(batch)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    def forward_step(teacher_: ModuleTeacher) -> Callable[[dict], None]:
        amp = torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else nullcontext()

        def step(batch: dict) -> None:
            begin(batch, channels_last)
            with amp:
                teacher_(batch)

        return step

    def build_cache() -> dict[str, Any]:
        t0 = time.perf_counter()
        meta = cache_teacher(
            live_teacher(False),
            data,
            Path(tmp.name) / "cache",
            dtype="fp16",
            views=cache_views if aug is not None else 1,
            augment=aug,
            seed=seed,
            batch_size=1024,
            device=dev,
            overwrite=True,
        )
        return {
            "build_s": round(time.perf_counter() - t0, 3),
            "views": meta["views"],
            "dtype": meta["dtype"],
            "bytes": meta["bytes"],
            "summary": describe(meta),
        }

    if len(data) < batch_size:
        raise ConfigError(
            f"The bench needs at least one full batch: {len(data)} samples < batch size {batch_size}."
        )
    results: dict[str, Any] = {}
    rounds: dict[str, list[dict[str, float]]] = {}
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # autotune convolutions in the warm-up, as airbench does
    cache_info: dict[str, Any] = {}
    tmp = tempfile.TemporaryDirectory(prefix="kdistill-bench-")
    try:
        for rnd in range(repeat):
            for path in paths:
                s = build(student) if path != "teacher" else None
                if path not in ("naive", "teacher"):
                    if channels_last:
                        s.to(memory_format=torch.channels_last)
                    if compile and compile_scope == "networks":
                        s.compile(mode=compile_mode)
                views = None
                if path == "teacher":
                    model = live_teacher(True, alone=True)
                elif path == "student":
                    model = create("ce", s)
                elif path == "kd_live":
                    model = create("kd", s, live_teacher(True), temperature=temperature)
                elif path == "kd_cached":
                    if not cache_info:  # built once, read by every round
                        cache_info = build_cache()
                    cached = CachedTeacher.open(Path(tmp.name) / "cache", data, k).to(dev)
                    views = cached.views
                    model = create("kd", s, cached, temperature=temperature)
                else:
                    model = create("kd", s, live_teacher(False), temperature=temperature)
                if path == "teacher":
                    opt = None
                else:
                    model.to(dev).train()
                    if compile and compile_scope == "step" and path != "naive":
                        model.compile(mode=compile_mode)
                if path == "naive":
                    opt = torch.optim.SGD(model.trainable_parameters(), lr=0.01, momentum=0.9)
                    batches = _naive_batches(data, batch_size, aug, dev, seed)
                    step = fast_step(model, opt, fp32=True)
                else:
                    from .config import TrainConfig

                    if path != "teacher":
                        opt = make_optimizer(model.trainable_parameters(), TrainConfig(optimizer="sgd", lr=0.01), dev)
                    loader = data.loader(
                        batch_size,
                        shuffle=True,
                        seed=seed,
                        device=dev,
                        augment=aug if views is None else None,
                        views=views,
                        drop_last=True,  # one batch shape: no recompilation inside the timed steps
                    )
                    batches = _forever(loader)
                    step = forward_step(model) if path == "teacher" else fast_step(model, opt)
                reset_peak_memory(dev)
                seconds, warm = _timed(step, batches, warmup, steps, dev)
                n = steps * batch_size
                r = {"images_per_s": n / seconds, "peak_memory_bytes": peak_memory_bytes(dev), "warmup_s": warm}
                rounds.setdefault(path, []).append(r)
                if log is not None:
                    log(
                        f"{path:10s} {r['images_per_s']:10.1f} img/s  {1e3 * seconds / steps:8.2f} ms/step  "
                        f"peak {r['peak_memory_bytes'] / 2**20:8.1f} MiB" + (f"  (round {rnd + 1}/{repeat})" if repeat > 1 else "")
                    )
                del model, opt, batches
    finally:
        torch.backends.cudnn.benchmark = cudnn_benchmark
        tmp.cleanup()
    for path, rs in rounds.items():
        ips = statistics.median(r["images_per_s"] for r in rs)
        results[path] = {
            "images_per_s": ips,
            "step_ms": 1e3 * batch_size / ips,
            "peak_memory_bytes": max(r["peak_memory_bytes"] for r in rs),
            "warmup_s": round(rs[0]["warmup_s"], 3),
            "rounds_images_per_s": [round(r["images_per_s"], 2) for r in rs],
        }
    if "naive" in results:
        ref = results["naive"]["images_per_s"]
        for name, r in results.items():
            if name != "teacher":  # a forward pass is not a training step: no ratio to one
                r["speedup_vs_naive"] = r["images_per_s"] / ref
    return {
        "paths": results,
        "targets": check_targets(results, dev.type),
        "cache": cache_info,
        "config": {
            "teacher": teacher,
            "student": student,
            "dataset": dataset,
            "data_options": data_options,
            "n_train": len(data),
            "batch_size": batch_size,
            "steps": steps,
            "warmup": warmup,
            "precision": "bf16" if bf16 else "fp32",
            "compile": compile,
            "compile_mode": compile_mode if compile else None,
            "compile_scope": compile_scope if compile else None,
            "channels_last": channels_last,
            "augment": aug is not None,
            "cache_views": cache_views,
            "repeat": repeat,
            "seed": seed,
        },
        "device": _device_name(dev),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "host": platform.node(),
    }


def check_targets(paths: dict[str, dict[str, float]], device_type: str) -> list[dict[str, Any]]:
    """The speed targets that the measured ``paths`` allow to check, each with its verdict.

    * ``kd_live_vs_naive``: live-KD images/s over the naive path's, at least
      :data:`LIVE_VS_NAIVE_GPU` on CUDA and at least 1 (not slower) elsewhere;
    * ``kd_cached_vs_student``: cached-KD images/s over the student alone's, at least
      :data:`CACHED_VS_STUDENT`;
    * ``kd_live_vs_student_plus_teacher``: live-KD step time over (student step time +
      teacher forward time), at most ``1 +`` :data:`LIVE_OVERHEAD`.

    Returns ``[{"name", "value", "op", "target", "met"}]``; a target whose paths were not
    measured is left out.
    """

    def ips(p: str) -> float:
        return paths[p]["images_per_s"]

    out = []

    def add(name: str, value: float, op: str, target: float) -> None:
        met = value >= target if op == ">=" else value <= target
        out.append({"name": name, "value": round(value, 4), "op": op, "target": target, "met": bool(met)})

    if "kd_live" in paths and "naive" in paths:
        add("kd_live_vs_naive", ips("kd_live") / ips("naive"), ">=",
            LIVE_VS_NAIVE_GPU if device_type == "cuda" else 1.0)
    if "kd_cached" in paths and "student" in paths:
        add("kd_cached_vs_student", ips("kd_cached") / ips("student"), ">=", CACHED_VS_STUDENT)
    if {"kd_live", "student", "teacher"} <= paths.keys():
        budget = paths["student"]["step_ms"] + paths["teacher"]["step_ms"]
        add("kd_live_vs_student_plus_teacher", paths["kd_live"]["step_ms"] / budget, "<=", 1.0 + LIVE_OVERHEAD)
    return out


def format_targets(result: dict[str, Any]) -> list[str]:
    """One line per checked target, e.g. ``kd_live_vs_naive  4.54 >= 5.0  not met``."""
    return [
        f"{t['name']:32s} {t['value']:7.3f} {t['op']} {t['target']:<5g} {'met' if t['met'] else 'NOT met'}"
        for t in result.get("targets", [])
    ]


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def format_table(result: dict[str, Any]) -> list[tuple[str, ...]]:
    """Rows ``(path, images/s, ms/step, peak MiB, x naive)`` for printing (``-``: no ratio)."""
    rows = []
    for name, r in result["paths"].items():
        x = r.get("speedup_vs_naive")
        rows.append(
            (
                name,
                f"{r['images_per_s']:.1f}",
                f"{r['step_ms']:.2f}",
                f"{r['peak_memory_bytes'] / 2**20:.1f}",
                "-" if x is None else f"{x:.2f}",
            )
        )
    return rows
