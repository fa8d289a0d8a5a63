"""Leaf helpers that measure a model: parameter counts, stored bytes, forward latency."""

from __future__ import annotations

import os
import statistics
import time
import warnings

import torch
from torch import nn


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


def timed_rounds(run, repeats: int, rounds: int, sync=None) -> list[list[float]]:
    """``repeats`` calls of ``run()`` split into ``rounds`` rounds, each call timed in ms."""
    per = max(3, -(-repeats // rounds))
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
    if busy:
        warnings.warn(
            f"Latency of {type(model).__name__} varied by {best['spread']:.0%} between rounds in {attempts} attempts"
            + (f" (load average {load:.1f} on {os.cpu_count()} cores)" if load is not None else "")
            + ": the machine was busy. The median is recorded with busy: true; time on an idle machine to compare.",
            stacklevel=2,
        )
    return {
        "p50": best["p50"],
        "p95": best["p95"],
        "min": best["min"],
        "spread_pct": round(100 * best["spread"], 1),
        "busy": busy,
        "load_avg": round(load, 2) if load is not None else None,
        "batch_size": batch_size,
        "repeats": max(3, -(-repeats // rounds)) * rounds,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
    }
