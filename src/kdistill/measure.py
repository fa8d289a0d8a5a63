"""Leaf helpers that measure a model: parameter counts, stored bytes, forward latency."""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger("kdistill.measure")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def param_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers as stored (what a safetensors file holds, minus header)."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def summarize_times(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    p50 = times[len(times) // 2]
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
    return p50, p95


#: spread of the round medians, relative to their median, above which a machine is "busy"
BUSY_SPREAD = 0.3


def round_stats(rounds: list[list[float]]) -> dict[str, float]:
    """Median, p95 and spread of timings taken in rounds: ``p50`` is the median of the
    rounds' medians (one disturbed round cannot move it), ``spread`` the range of the round
    medians relative to ``p50``."""
    meds = sorted(statistics.median(r) for r in rounds)
    flat = [t for r in rounds for t in r]
    p50 = statistics.median(meds)
    _, p95 = summarize_times(flat)
    return {"p50": p50, "p95": p95, "min": min(flat), "spread": (meds[-1] - meds[0]) / p50 if p50 > 0 else 0.0}


def round_plan(repeats: int, rounds: int) -> tuple[int, int]:
    """``(rounds, passes per round)`` for about ``repeats`` timed passes: at least 3 passes
    a round, so few repeats make fewer rounds (9 repeats: 3 rounds of 3)."""
    r = max(1, min(rounds, repeats // 3))
    return r, max(1, -(-repeats // r))


def timed_rounds(run, repeats: int, rounds: int, sync=None) -> list[list[float]]:
    """About ``repeats`` calls of ``run()`` in ``rounds`` rounds (:func:`round_plan`), each
    call timed in ms."""
    rounds, per = round_plan(repeats, rounds)
    out = []
    for _ in range(rounds):
        times = []
        for _ in range(per):
            if sync:
                sync()
            t0 = time.perf_counter()
            run()
            if sync:
                sync()
            times.append((time.perf_counter() - t0) * 1e3)
        out.append(times)
    return out


@torch.no_grad()
def latency_ms(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    repeats: int = 50,
    warmup: int = 10,
    device: str | torch.device = "cpu",
    rounds: int = 5,
    attempts: int = 3,
) -> dict[str, float]:
    """Forward latency in milliseconds for one batch, after warm-up, that a busy machine
    cannot fake.

    The timed passes run in ``rounds`` rounds; ``p50`` is the median of the round medians
    (a stall in one round does not move it) and ``spread_pct`` the range of the round
    medians relative to it. When the spread exceeds :data:`BUSY_SPREAD` the measurement is
    repeated (up to ``attempts`` times) and the steadiest attempt kept; if none is steady,
    ``busy`` is true and a warning says so, with the load average.
    """
    was = model.training
    model.eval()
    x = torch.randn((batch_size, *input_shape), device=device)
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        model(x)
    best = None
    for _ in range(max(1, attempts)):
        stats = round_stats(timed_rounds(lambda: model(x), repeats, rounds, torch.cuda.synchronize if cuda else None))
        if best is None or stats["spread"] < best["spread"]:
            best = stats
        if stats["spread"] <= BUSY_SPREAD:
            break
    model.train(was)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    busy = best["spread"] > BUSY_SPREAD
    if busy:  # a logged line, not a Python warning: the caller's output decides how it shows
        log.warning(
            f"latency of {type(model).__name__} varied by {best['spread']:.0%} between rounds in {attempts} attempts"
            + (f" (load average {load:.1f} on {os.cpu_count()} cores)" if load is not None else "")
            + ": the machine was busy. The median is recorded with busy: true; time on an idle machine to compare."
        )
    return {
        "p50": best["p50"],
        "p95": best["p95"],
        "min": best["min"],
        "spread_pct": round(100 * best["spread"], 1),
        "busy": busy,
        "load_avg": round(load, 2) if load is not None else None,
        "batch_size": batch_size,
        "repeats": round_plan(repeats, rounds)[0] * round_plan(repeats, rounds)[1],
        "rounds": round_plan(repeats, rounds)[0],
        "threads": torch.get_num_threads(),
    }


# -- interleaved timing -------------------------------------------------------------------------
#: others' share of the machine's CPU time while timing above which no ratio is shown
BUSY_OTHERS = 0.5


def _cpu_ticks() -> tuple[float, float] | None:
    """``(busy, total)`` CPU seconds of the whole machine since boot (``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return (sum(fields) - idle) / hz, sum(fields) / hz


class LoadProbe:
    """How much of the machine other processes used during a window: the machine's busy CPU
    time (``/proc/stat``) less this process's own (``time.process_time``), over the wall
    time times the cores. 0 is an idle machine, 1 every core busy with someone else's work."""

    def __enter__(self) -> LoadProbe:
        self.t0, self.cpu0, self.stat0 = time.perf_counter(), time.process_time(), _cpu_ticks()
        self.others: float | None = None
        return self

    def __exit__(self, *exc) -> None:
        stat1, wall = _cpu_ticks(), time.perf_counter() - self.t0
        if self.stat0 is None or stat1 is None or wall <= 0:
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            self.others = None if load is None else min(1.0, load / (os.cpu_count() or 1))
            return
        mine = time.process_time() - self.cpu0
        busy, total = stat1[0] - self.stat0[0], stat1[1] - self.stat0[1]
        cores = total / wall if total > 0 else float(os.cpu_count() or 1)
        self.others = max(0.0, min(1.0, (busy - mine) / (wall * max(cores, 1.0))))


def _spread(meds: list[float]) -> float:
    """Interquartile range of the round medians relative to their median."""
    if len(meds) < 2:
        return 0.0
    q = statistics.quantiles(meds, n=4, method="inclusive")
    mid = statistics.median(meds)
    return (q[2] - q[0]) / mid if mid > 0 else 0.0


def _passes(run: Callable[[], object], warmup: int, round_s: float) -> int:
    """Warm ``run`` up; passes per round so one round takes about ``round_s`` (1..200)."""
    t = 0.0
    for _ in range(max(1, warmup)):
        t0 = time.perf_counter()
        run()
        t = time.perf_counter() - t0
    return int(max(1, min(200, round_s / max(t, 1e-7))))


def interleaved(runners: dict[str, Callable[[], object]], budget_s: float = 2.0, warmup: int = 3,
                max_rounds: int = 15, min_rounds: int = 3, sync: Callable[[], None] | None = None) -> dict[str, dict]:
    """Time several models against each other fairly: rounds in which every runner takes its
    turn (the order rotating), so a change in machine load hits all of them alike; stops after
    ``max_rounds`` or once ``budget_s`` seconds have passed (at least ``min_rounds``).

    Per runner: ``p50`` (median of the round medians), ``p05``/``p95`` of all passes,
    ``spread`` (interquartile range of round medians / p50), ``others_load`` (the machine's
    CPU share other processes used meanwhile, :class:`LoadProbe`) and ``reliable``:
    spread at most :data:`BUSY_SPREAD` and others' load at most :data:`BUSY_OTHERS`."""
    names = list(runners)
    round_s = budget_s / (max_rounds * max(1, len(names)))
    per = {n: _passes(runners[n], warmup, round_s) for n in names}
    times: dict[str, list[list[float]]] = {n: [] for n in names}
    start = time.perf_counter()
    with LoadProbe() as probe:
        for r in range(max_rounds):
            for n in names[r % len(names):] + names[: r % len(names)]:
                one = []
                for _ in range(per[n]):
                    if sync:
                        sync()
                    t0 = time.perf_counter()
                    runners[n]()
                    if sync:
                        sync()
                    one.append((time.perf_counter() - t0) * 1e3)
                times[n].append(one)
            if r + 1 >= min_rounds and time.perf_counter() - start > budget_s:
                break
    out = {}
    for n in names:
        meds = [statistics.median(t) for t in times[n]]
        flat = sorted(t for r in times[n] for t in r)
        spread = _spread(meds)
        others = probe.others
        out[n] = {"p50": statistics.median(meds), "p05": flat[int(0.05 * (len(flat) - 1))],
                  "p95": flat[int(round(0.95 * (len(flat) - 1)))], "spread_pct": round(100 * spread, 1),
                  "others_load_pct": None if others is None else round(100 * others, 1), "rounds": len(meds),
                  "passes": len(flat), "reliable": spread <= BUSY_SPREAD and (others is None or others <= BUSY_OTHERS)}
    return out
