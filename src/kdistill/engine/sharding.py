"""FSDP (``train.fsdp: true``): the student sharded over the processes, through Accelerate.

DDP keeps a whole copy of the student on every process; FSDP (PyTorch's ``fully_shard``,
"FSDP2", applied by Accelerate's ``FullyShardedDataParallelPlugin``) keeps 1/N of every
parameter, gradient and optimizer state per process and gathers a unit's parameters only
while it runs. The teacher is never sharded (it is outside the distiller's module tree).

What kdistill does around Accelerate's plugin:

* **Units.** The student is always its own FSDP unit, so evaluation can run the student
  alone; ``train.fsdp_wrap`` names more module classes (e.g. ``BasicBlock``) to shard
  unit by unit. The distiller is the root unit (connectors and heads of the terms).
* **CPU process groups.** Accelerate 1.15 turns its FSDP plugin on only for GPU-type
  process groups; ``fully_shard`` itself runs on gloo. :func:`get_fsdp_accelerator` sets
  the Accelerate state to FSDP on a multi-process CPU run, so the same code path runs
  on CPU (CI) and GPU.
* **A working copy.** ``fully_shard`` changes a module in place (its parameters become
  ``DTensor`` shards). The trainer shards a deep copy of the distiller (the teacher is
  shared, not copied) and, after training, gathers the full weights back into the
  caller's distiller, so everything after training (saving, latency, export) sees
  ordinary tensors.
* **Full state dicts.** Checkpoints hold full (unsharded) weights, as a DDP run writes
  them, and the optimizer state in ``torch.distributed.checkpoint``'s full, name-keyed
  form; a resumed FSDP run loads both into its shards.
* **Agreement.** Buffers (BatchNorm statistics) are per process under ``fully_shard``;
  they are broadcast from process 0 before every evaluation and checkpoint (DDP does so
  before every forward), so every process evaluates the same network and takes the same
  decisions (best checkpoint, stop) — a checkpoint is a collective operation here.
"""

from __future__ import annotations

import copy
import gc
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError

#: what ``train_state.pt`` says about the form of its optimizer state
OPTIMIZER_FORMAT = {False: "torch", True: "fsdp-full"}


def make_plugin():
    """Accelerate's FSDP2 plugin: full sharding, units by class name, full state dicts."""
    from accelerate import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=[],
        reshard_after_forward=True,
        state_dict_type="FULL_STATE_DICT",
    )


def enable_on_cpu(accelerator, plugin, mixed_precision: str) -> None:
    """Make a multi-process CPU (gloo) Accelerate state FSDP, as Accelerate does itself for
    GPU process groups: the accelerator's state and the process state it is re-read from
    (``AcceleratorState()`` copies ``PartialState``'s ``distributed_type``)."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = accelerator.state
    if state.distributed_type == DistributedType.MULTI_CPU:
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = plugin
        vars(PartialState())["distributed_type"] = DistributedType.FSDP  # the shared (Borg) state
        if mixed_precision != "no":
            plugin.set_mixed_precision(mixed_precision)


def disable_on_cpu() -> None:
    """Undo :func:`enable_on_cpu` before a new, unsharded accelerator is made."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    shared = vars(PartialState())  # every PartialState shares one __dict__ (Accelerate's Borg pattern)
    if shared.get("distributed_type") == DistributedType.FSDP and shared.get("device", torch.device("cpu")).type == "cpu":
        shared["distributed_type"] = DistributedType.MULTI_CPU


def reset_accelerator_state(accelerator) -> None:
    """Forget the accelerator settings of this process (precision, FSDP plugin), keeping
    the process group, so an ``Accelerator`` with other settings can be made. Accelerate
    keeps them in one dict shared by every ``AcceleratorState`` (a Borg), which is also
    ``accelerator.state.__dict__``; clearing it is what Accelerate's internal
    ``_reset_state`` does, without calling a private method (Accelerate 1.15)."""
    vars(accelerator.state).clear()


def is_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def set_units(accelerator, model: nn.Module, student: nn.Module, extra: list[str]) -> list[str]:
    """Point the plugin's wrap policy at this model: the student's class plus ``extra``
    class names, each checked to exist in the model. Returns the names."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    present = {type(m).__name__ for m in model.modules()}
    missing = [n for n in extra if n not in present]
    if missing:
        raise ConfigError(
            f"train.fsdp_wrap names {missing}, which are not module classes of this model; "
            f"classes present: {sorted(present)}."
        )
    names = list(dict.fromkeys([type(student).__name__, *extra]))
    plugin = accelerator.state.fsdp_plugin
    # Accelerate turns the policy into a partial bound to one model: reset it per model
    plugin.auto_wrap_policy = transformer_auto_wrap_policy
    plugin.transformer_cls_names_to_wrap = names
    return names


def working_copy(distiller: nn.Module) -> nn.Module:
    """A deep copy of the distiller that shares (does not copy) its teacher."""
    memo: dict[int, Any] = {}
    for t in getattr(distiller, "_teacher", []):
        memo[id(t)] = t
    return copy.deepcopy(distiller, memo)


def full_model_state(model: nn.Module, everywhere: bool = False) -> dict[str, Tensor]:
    """The unsharded state dict (a collective: every process must call it). On process 0
    only (CPU tensors) unless ``everywhere``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=not everywhere))


def full_optimizer_state(model: nn.Module, optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name, unsharded, on process 0 (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(model: nn.Module, optimizer, model_state: dict[str, Tensor], optim_state: dict | None) -> None:
    """Load full (unsharded) states into a sharded model and its optimizer."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=opts)
    if optim_state is not None:
        set_optimizer_state_dict(model, optimizer, optim_state, options=opts)


def agree(flag: bool, device: torch.device) -> bool:
    """True on every process when it is true on any (one all-reduce)."""
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def check_sharded(model: nn.Module) -> None:
    """Fail loudly if Accelerate handed back an unsharded model (a silent DDP fallback)."""
    import accelerate
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        raise ConfigError(
            f"train.fsdp: Accelerate {accelerate.__version__} returned a {type(model).__name__}, not an FSDP "
            "module; this kdistill was tested with Accelerate 1.15. Train without train.fsdp (DDP) or "
            "install accelerate==1.15.*."
        )


def keep_student_gathered(student: nn.Module) -> None:
    """Keep the student unit's own weights gathered from forward to backward.

    ``fully_shard`` re-gathers a resharded unit for backward from a hook on the unit's
    *output*. Losses that read tensors made inside the student after its output (BYOT's
    exit heads) or instead of it (DML's per-peer logits) reach the weights first and find
    them freed. Peak memory barely changes: the whole unit is gathered during its forward
    and backward anyway; gradients and optimizer state stay sharded, and ``train.fsdp_wrap``
    units inside keep resharding."""
    student.set_reshard_after_forward(False, recurse=False)


def local_fraction(model: nn.Module) -> float:
    """Share of the model's parameter elements held by this process (right after sharding:
    a unit that is gathered at the moment holds plain tensors)."""
    from torch.distributed.tensor import DTensor

    total = local = 0
    for p in model.parameters():
        total += p.numel()
        local += p.to_local().numel() if isinstance(p, DTensor) else p.numel()
    return local / max(1, total)


def reshard(model: nn.Module) -> None:
    """Free the gathered parameters of every FSDP unit (after an evaluation that called
    the student unit on its own, outside the root's forward)."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def as_plain(norm: Tensor) -> Tensor:
    """A gradient norm as a plain tensor (a ``DTensor`` under FSDP)."""
    from torch.distributed.tensor import DTensor

    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def collect() -> None:
    """Collect dropped sharded modules now: a ``fully_shard`` module still alive when the
    interpreter exits can abort the process ('terminate called without an active
    exception', seen on gloo in 2 of 5 runs; 0 of 20 after collecting first)."""
    gc.collect()
