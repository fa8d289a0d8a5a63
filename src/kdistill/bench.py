"""Training throughput: what the fast path buys, measured the same way for every path.

``run_bench`` times optimizer steps (forward, backward, step) of one student on one
dataset along these paths:

* ``student``: the student alone (hard labels), fast path;
* ``kd_live``: Hinton KD with the teacher run on every batch, fast path;
* ``kd_cached``: Hinton KD reading the teacher's outputs from a cache of augmented views
  (:mod:`kdistill.cache`), fast path;

The three fast paths time :meth:`kdistill.engine.trainer.Trainer.train_step`, the step
``kdistill train`` runs (learning rate, layout, autocast, non-finite checks, backward,
clipping, optimizer step), on batches from the Trainer's own loader: the published speed is
the product's speed. Two paths stay outside the Trainer on purpose:

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

#: the code each path times (named in the result's ``timed_step`` and each path's ``code_path``)
TIMED_STEP = "kdistill.engine.trainer.Trainer.train_step"
CODE_PATHS = {
    "student": TIMED_STEP,
    "kd_live": TIMED_STEP,
    "kd_cached": TIMED_STEP,
    "naive": "kdistill.bench naive reference loop (DataLoader, CPU augmentation, fp32)",
    "teacher": "teacher forward pass (inference mode)",
}

#: defaults that fit the device: (timed steps, warm-up steps, training samples; None = all).
#: On a 2-core CPU a resnet32x4 teacher forward is about 0.6 s per batch of 128, so the
#: GPU defaults (60k samples x 4 views through the teacher for the cache, 60 steps per path)
#: ran for over 15 minutes; the CPU defaults finish in a few.
DEFAULTS = {"cuda": (50, 10, None), "cpu": (10, 2, 2048)}


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


def _forever(loader, batch_size: int) -> Iterator[dict]:
    """Full batches from ``loader``, epoch after epoch (an epoch's short last batch is left
    out: one batch shape, so no recompilation inside the timed steps)."""
    epoch = 0
    while True:
        for batch in loader.iterate(epoch):
            if batch["y"].shape[0] == batch_size:
                yield batch
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
    teacher: str = "resnet32x4", student: str = "resnet8x4", dataset: str = "fashion-mnist",
    data_options: dict[str, Any] | None = None, batch_size: int = 128, steps: int | None = None,
    warmup: int | None = None, device: str = "auto", precision: str = "auto", compile: bool = False,
    compile_mode: str = "default", compile_scope: str = "networks", channels_last: bool | None = None,
    augment: bool = True, cache_views: int = 4, n_train: int | str | None = "auto", temperature: float = 4.0,
    paths: tuple[str, ...] = PATHS, repeat: int = 1, seed: int = 0, log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time ``steps`` training steps along each path (see the module docstring).

    Args:
        teacher, student: model names (``kdistill list models``).
        dataset: dataset name; ``data_options`` are its options (default for
            ``fashion-mnist``: ``pad_to=32``, the CIFAR-size input of the resnet zoo).
        batch_size: samples per step.
        steps: timed steps per path; ``warmup`` untimed steps before them (compilation,
            allocator and cuDNN autotuning happen there). Default (None): from
            :data:`DEFAULTS` for the device (50 + 10 on CUDA, 10 + 2 elsewhere).
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
        n_train: use only this many training samples (a quick run); None: all of them;
            ``"auto"``: all on CUDA, 2048 elsewhere (:data:`DEFAULTS`).
        temperature: KD temperature (does not change the cost).
        paths: which of :data:`PATHS` to run.
        repeat: measure every path this many times, round-robin (path 1, 2, ..., 1, 2, ...),
            and report the median images/s of the rounds (each round's number is kept in
            ``rounds_images_per_s``): on a shared, noisy machine the ratios between paths
            then come from interleaved measurements, not from one unlucky window.
        seed: seed of initialisation, data order and augmentation.
        log: prints progress lines (``bench: ...``) and one result line per path.

    Returns:
        ``{"paths": {name: {"images_per_s", "step_ms", "peak_memory_bytes", "warmup_s",
        "code_path"}}, "timed_step", "cache": {...}, "config": {...}, "device", "torch",
        "host", ...}``; ``timed_step`` names the training step the fast paths timed.
    """
    from .devices import resolve_device

    _check_settings(paths, compile_scope, precision)
    dev = resolve_device(device)
    d_steps, d_warmup, d_n = DEFAULTS["cuda" if dev.type == "cuda" else "cpu"]
    steps, warmup = d_steps if steps is None else steps, d_warmup if warmup is None else warmup
    n_train = d_n if n_train == "auto" else n_train
    _check_counts(batch_size=batch_size, steps=steps, repeat=repeat)
    if data_options is None:
        data_options = {"pad_to": 32} if dataset == "fashion-mnist" else {}
    b = _Bench(teacher, student, dataset, data_options, n_train, batch_size, dev, seed, log or (lambda line: None),
               compile, compile_mode, compile_scope, channels_last, augment, cache_views, temperature,
               bf16=precision == "bf16" or (precision == "auto" and dev.type == "cuda"), device=device)
    results = _summarise(b.measure(paths, warmup, steps, repeat, log), batch_size)
    config = {"teacher": teacher, "student": student, "dataset": dataset, "data_options": data_options,
              "n_train": len(b.data), "batch_size": batch_size, "steps": steps, "warmup": warmup,
              "precision": "bf16" if b.bf16 else "fp32", "compile": compile,
              "compile_mode": compile_mode if compile else None, "compile_scope": compile_scope if compile else None,
              "channels_last": b.channels_last, "augment": b.aug is not None, "cache_views": cache_views,
              "repeat": repeat, "seed": seed}
    return {
        "paths": results,
        "timed_step": TIMED_STEP,
        "targets": check_targets(results, dev.type),
        "cache": b.cache_info,
        "config": config,
        "device": _device_name(dev),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "host": platform.node(),
    }


def _check_settings(paths: tuple[str, ...], compile_scope: str, precision: str) -> None:
    from .errors import ConfigError

    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise ConfigError(f"Unknown bench path(s) {unknown}; choose from {list(PATHS)}.")
    if compile_scope not in ("networks", "step"):
        raise ConfigError(f"bench compile_scope must be networks or step, got {compile_scope!r}.")
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"bench precision must be auto, fp32 or bf16, got {precision!r}.")


def _check_counts(**counts: int) -> None:
    from .errors import ConfigError

    for name, v in counts.items():
        if v < 1:
            raise ConfigError(f"{name} must be at least 1, got {v}.")


def _summarise(rounds: dict[str, list[dict[str, float]]], batch_size: int) -> dict[str, dict[str, Any]]:
    """Each path's median images/s over its rounds, and its speed over the naive path's."""
    results: dict[str, dict[str, Any]] = {}
    for path, rs in rounds.items():
        ips = statistics.median(r["images_per_s"] for r in rs)
        results[path] = {
            "images_per_s": ips,
            "step_ms": 1e3 * batch_size / ips,
            "peak_memory_bytes": max(r["peak_memory_bytes"] for r in rs),
            "warmup_s": round(rs[0]["warmup_s"], 3),
            "rounds_images_per_s": [round(r["images_per_s"], 2) for r in rs],
            "code_path": CODE_PATHS[path],
        }
    if "naive" in results:
        ref = results["naive"]["images_per_s"]
        for name, r in results.items():
            if name != "teacher":  # a forward pass is not a training step: no ratio to one
                r["speedup_vs_naive"] = r["images_per_s"] / ref
    return results


class _Runner:
    """One path, ready to time: its ``step(batch)``, its endless ``batches``, and the
    Trainer to release afterwards (fast paths)."""

    def __init__(self, step: Callable[[dict], None], batches: Iterator[dict], trainer: Any = None):
        self.step, self.batches, self.trainer = step, batches, trainer


class _Bench:
    """The bench's data, networks and settings, and one small runner per timed path."""

    def __init__(self, teacher, student, dataset, data_options, n_train, batch_size, dev, seed, say, compile,
                 compile_mode, compile_scope, channels_last, augment, cache_views, temperature, bf16: bool,
                 device: str):
        from .config import TrainConfig
        from .data import Augment, load_dataset, subset
        from .errors import ConfigError

        self.teacher_name, self.student_name, self.batch_size, self.dev, self.seed = (
            teacher, student, batch_size, dev, seed)
        self.say, self.compile, self.compile_mode, self.compile_scope = say, compile, compile_mode, compile_scope
        self.cache_views, self.temperature = cache_views, temperature
        say(f"bench: loading {dataset}" + (f" (up to {n_train} training samples)" if n_train else ""))
        data = load_dataset(dataset, **data_options).train
        if n_train and n_train < len(data):
            data = subset(data, n_train, seed=seed)
        self.data = data
        images = len(data.input_shape) == 3
        self.channels_last = images if channels_last is None else channels_last
        self.bf16 = bf16
        self.aug = Augment(4, True) if augment and images else None
        self.k, self.shape = data.num_classes, data.input_shape
        self.cache_info: dict[str, Any] = {}
        self.train_cfg = TrainConfig(
            optimizer="sgd", lr=0.01, epochs=1, seed=seed, device=device, precision="bf16" if bf16 else "fp32",
            channels_last=self.channels_last, compile=compile, compile_mode=compile_mode,
            compile_scope=compile_scope, progress=False)
        if len(data) < batch_size:
            raise ConfigError(
                f"The bench needs at least one full batch: {len(data)} samples < batch size {batch_size}."
            )

    # -- pieces ----------------------------------------------------------------------
    def build(self, name: str) -> nn.Module:
        from .models import create_model

        torch.manual_seed(self.seed)
        return create_model(name, self.k, self.shape).to(self.dev)

    def live_teacher(self, fast: bool, alone: bool = False):
        """The teacher; ``fast``: laid out and compiled as the Trainer's fast path would
        (only the forward-alone path needs this here: the Trainer does it for training)."""
        from .teachers import ModuleTeacher

        t = ModuleTeacher(self.build(self.teacher_name), self.k)
        if fast and self.channels_last:
            t.module.to(memory_format=torch.channels_last)
        if fast and self.compile and (alone or self.compile_scope == "networks"):
            t.module.compile(mode=self.compile_mode)
        return t

    def build_cache(self, folder: Path) -> dict[str, Any]:
        from .cache import cache_teacher, describe

        views = self.cache_views if self.aug is not None else 1
        self.say(f"bench: building the teacher cache ({len(self.data)} samples x {views} view(s) through the teacher)")
        t0 = time.perf_counter()
        meta = cache_teacher(self.live_teacher(False), self.data, folder, dtype="fp16", views=views, augment=self.aug,
                             seed=self.seed, batch_size=1024, device=self.dev, overwrite=True)
        return {"build_s": round(time.perf_counter() - t0, 3), "views": meta["views"], "dtype": meta["dtype"],
                "bytes": meta["bytes"], "summary": describe(meta)}

    def _on_trainer(self, model: nn.Module, folder: Path) -> _Runner:
        """A prepared Trainer over the bench's data: its ``train_step`` is what is timed, on
        batches from its own loader (the one ``kdistill train`` reads)."""
        from .engine.trainer import Trainer

        trainer = Trainer(model, self.data, {}, self.train_cfg, folder, self.batch_size, augment=self.aug,
                          log=lambda line: None)
        trainer.prepare()
        trainer.model.train()
        train_step = trainer.train_step

        def step(batch: dict) -> None:
            train_step(batch)

        return _Runner(step, _forever(trainer.loader, self.batch_size), trainer)

    # -- one runner per path -----------------------------------------------------------
    def run_student(self, tmp: Path) -> _Runner:
        from .methods import create

        return self._on_trainer(create("ce", self.build(self.student_name)), tmp / "student")

    def run_kd_live(self, tmp: Path) -> _Runner:
        from .methods import create

        model = create("kd", self.build(self.student_name), self.live_teacher(False), temperature=self.temperature)
        return self._on_trainer(model, tmp / "kd_live")

    def run_kd_cached(self, tmp: Path) -> _Runner:
        from .cache import CachedTeacher
        from .methods import create

        if not self.cache_info:  # built once, read by every round
            self.cache_info = self.build_cache(tmp / "cache")
        cached = CachedTeacher.open(tmp / "cache", self.data, self.k).to(self.dev)
        model = create("kd", self.build(self.student_name), cached, temperature=self.temperature)
        return self._on_trainer(model, tmp / "kd_cached")

    def run_naive(self, tmp: Path) -> _Runner:
        """The reference loop's step: fp32, NCHW, no compile, plain forward/backward/step."""
        from .methods import create

        model = create("kd", self.build(self.student_name), self.live_teacher(False), temperature=self.temperature)
        model.to(self.dev).train()
        opt = torch.optim.SGD(model.trainable_parameters(), lr=0.01, momentum=0.9)

        def step(batch: dict) -> None:
            loss = model(batch)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return _Runner(step, _naive_batches(self.data, self.batch_size, self.aug, self.dev, self.seed))

    def run_teacher(self, tmp: Path) -> _Runner:
        """The teacher's forward alone, as the live-KD path runs it: a CUDA-graph step marked,
        the batch laid out, autocast."""
        model = self.live_teacher(True, alone=True)
        amp = torch.autocast(self.dev.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

        def step(batch: dict) -> None:
            if self.compile and self.compile_mode in CUDAGRAPH_MODES:
                torch.compiler.cudagraph_mark_step_begin()
            if self.channels_last and batch["x"].dim() == 4:
                batch["x"] = batch["x"].contiguous(memory_format=torch.channels_last)
            with amp:
                model(batch)

        loader = self.data.loader(self.batch_size, shuffle=True, seed=self.seed, device=self.dev, augment=self.aug)
        return _Runner(step, _forever(loader, self.batch_size))

    # -- the rounds --------------------------------------------------------------------
    def measure(self, paths: tuple[str, ...], warmup: int, steps: int, repeat: int,
                log: Callable[[str], None] | None) -> dict[str, list[dict[str, float]]]:
        """Every path ``repeat`` times, round-robin; each round's images/s, peak memory and warm-up."""
        rounds: dict[str, list[dict[str, float]]] = {}
        cudnn_benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True  # autotune convolutions in the warm-up, as airbench does
        tmp = tempfile.TemporaryDirectory(prefix="kdistill-bench-")
        try:
            for rnd in range(repeat):
                of = f" (round {rnd + 1}/{repeat})" if repeat > 1 else ""
                for path in paths:
                    self.say(f"bench: {path}: {warmup} warm-up + {steps} timed steps{of}")
                    runner = getattr(self, f"run_{path}")(Path(tmp.name))
                    reset_peak_memory(self.dev)
                    try:
                        seconds, warm = _timed(runner.step, runner.batches, warmup, steps, self.dev)
                    finally:
                        if runner.trainer is not None:
                            runner.trainer.release()
                    r = {"images_per_s": steps * self.batch_size / seconds,
                         "peak_memory_bytes": peak_memory_bytes(self.dev), "warmup_s": warm}
                    rounds.setdefault(path, []).append(r)
                    if log is not None:
                        log(f"{path:10s} {r['images_per_s']:10.1f} img/s  {1e3 * seconds / steps:8.2f} ms/step  "
                            f"peak {r['peak_memory_bytes'] / 2**20:8.1f} MiB" + (f" {of}" if of else ""))
                    del runner
        finally:
            torch.backends.cudnn.benchmark = cudnn_benchmark
            tmp.cleanup()
        return rounds


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
