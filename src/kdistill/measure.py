"""Leaf helpers that measure a model: parameter counts, stored bytes, forward latency."""

from __future__ import annotations

import time

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


@torch.no_grad()
def latency_ms(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    repeats: int = 50,
    warmup: int = 10,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Median and p95 forward latency in milliseconds for one batch, after warm-up."""
    was = model.training
    model.eval()
    x = torch.randn((batch_size, *input_shape), device=device)
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(x)
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    model.train(was)
    p50, p95 = summarize_times(times)
    return {
        "p50": p50,
        "p95": p95,
        "batch_size": batch_size,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
    }
