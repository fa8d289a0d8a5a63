"""Leaf helpers about devices: which device a name means, and peak memory on it."""

from __future__ import annotations

from pathlib import Path

import torch


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; any other name as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def peak_memory_bytes(device: torch.device | str) -> int:
    """Peak memory since the last :func:`reset_peak_memory`: CUDA bytes allocated by
    tensors on a GPU, else the process's peak resident set (``VmHWM``, or
    ``getrusage``'s ``ru_maxrss`` where /proc is missing)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def reset_peak_memory(device: torch.device | str) -> None:
    """Start a new peak: CUDA's allocator statistics, or Linux's ``VmHWM`` (``clear_refs`` 5)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # the peak then covers the whole process so far
