"""Collectives for state that every process must share: buffers (BatchNorm statistics)
and method state such as CRD's memory banks.

Each function is the identity on one process (no ``torch.distributed`` process group, or a
group of one), so a method calls them unconditionally. Under DDP or FSDP every process runs
the training step, so every process reaches the same collectives in the same order; call
them only from training-mode code (evaluation may run on the main process alone).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from torch import Tensor, nn


def world_size() -> int:
    """Processes in the default process group (1 without one)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Whether this process writes shared files: rank 0 of a ``torchrun`` or ``accelerate
    launch`` (both set ``RANK``), or the only process."""
    return int(os.environ.get("RANK", "0")) == 0


def sync_processes() -> None:
    """Wait until every process of a multi-process run gets here, so files the main process
    has just written are there for the others to read (a no-op on one process)."""
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()


@contextmanager
def main_process_first():
    """Run the block on the main process first and on the others after it: what the main
    process writes there (a cache, a transfer set) the others find when they run it (the
    identity on one process)."""
    main = is_main_process()
    if not main:
        sync_processes()
    yield
    if main:
        sync_processes()


def sync_buffers(model: nn.Module) -> None:
    """Copy process 0's buffers (BatchNorm statistics, CRD's banks) to every process (a
    collective)."""
    if world_size() == 1:
        return
    import torch.distributed as dist

    for b in model.buffers():
        dist.broadcast(b.data, src=0)


def gather_rows(*tensors: Tensor) -> tuple[Tensor, ...]:
    """Every process's rows of each tensor, concatenated in rank order (not differentiable).

    The tensors of one call share their first dimension; it may differ between processes
    (a last, shorter batch): the lengths are exchanged first and the rows padded to the
    longest, then trimmed.
    """
    world = world_size()
    if world == 1:
        return tensors
    import torch.distributed as dist

    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError(f"gather_rows: first dimensions differ: {[t.shape[0] for t in tensors]}")
    device = tensors[0].device
    sizes = torch.empty(world, dtype=torch.long, device=device)
    dist.all_gather_into_tensor(sizes, torch.tensor([n], dtype=torch.long, device=device))
    lengths = sizes.tolist()
    longest = max(lengths)
    out = []
    for t in tensors:
        t = t.detach().contiguous()
        if n < longest:
            t = torch.cat([t, t.new_zeros((longest - n, *t.shape[1:]))])
        rows = t.new_empty((world * longest, *t.shape[1:]))
        dist.all_gather_into_tensor(rows, t)
        out.append(torch.cat([rows[r * longest : r * longest + k] for r, k in enumerate(lengths)]))
    return tuple(out)


def mean_over_processes(t: Tensor) -> Tensor:
    """The mean of ``t`` over processes (a new tensor; ``t`` is left as it is)."""
    world = world_size()
    if world == 1:
        return t
    import torch.distributed as dist

    total = t.detach().clone()
    dist.all_reduce(total)
    return total / world
