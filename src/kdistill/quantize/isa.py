"""What the CPU this runs on can do with int8: its ISA flags, read from ``/proc/cpuinfo``.

x86 int8 kernels multiply uint8 activations by int8 weights. Without VNNI they use
``vpmaddubsw``, whose int16 pair sums saturate when activations use all 8 bits, so ONNX
Runtime's int8 kernels drift from the quantized model unless activations are limited to 7
bits (``reduce_range``). With VNNI (``avx512_vnni``, ``avx_vnni``) or AMX (``amx_int8``)
the products accumulate in int32 and full-range activations are exact. The default range
is therefore read from the CPU: full range where one of those flags is present, 7 bits
elsewhere (a CPU whose flags cannot be read, e.g. not Linux or not x86, gets the safe 7
bits).
"""

from __future__ import annotations

import platform
from pathlib import Path

#: flags that make full-range (8-bit) activations exact in x86 int8 kernels
EXACT_FULL_RANGE = ("avx512_vnni", "avx_vnni", "amx_int8", "amx_tile")
#: flags worth recording next to an int8 latency
REPORTED = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, object]:
    """``{"flags": [the REPORTED flags present], "model": CPU name, "machine": arch,
    "readable": whether flags could be read}``."""
    flags: set[str] = set()
    model = platform.processor() or ""
    readable = False
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "flags" and not readable:
                flags, readable = set(value.split()), True
            elif key == "model name" and not model:
                model = value.strip()
    except OSError:
        pass
    return {"flags": [f for f in REPORTED if f in flags], "model": model, "machine": platform.machine(),
            "readable": readable}


def full_range_exact(info: dict[str, object] | None = None) -> bool:
    """Whether 8-bit activations are exact in this CPU's int8 kernels (VNNI or AMX)."""
    info = cpu_flags() if info is None else info
    return any(f in EXACT_FULL_RANGE for f in info["flags"])  # type: ignore[union-attr]
