"""torch.distributed primitives shared by training and rollouts (each a no-op in one process).

The trainer (`ssp.training.distributed`) and the vLLM engines (`ssp.rollout.vllm`) both need to
know their rank, wait for each other, broadcast rank 0's value, and see full parameters of a model
whose parameters are sharded (FSDP2 DTensors, DeepSpeed ZeRO-3). They live here, below both.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def dist():
    """`torch.distributed` when a process group is up, else None."""
    import torch.distributed as d

    return d if d.is_available() and d.is_initialized() else None


def rank_world() -> tuple[int, int]:
    d = dist()
    return (d.get_rank(), d.get_world_size()) if d else (0, 1)


def barrier() -> None:
    d = dist()
    if d:
        d.barrier()


def broadcast(obj: Any) -> Any:
    """rank 0's value on every rank (a collective)."""
    d = dist()
    if not d or d.get_world_size() == 1:
        return obj
    box = [obj if d.get_rank() == 0 else None]
    d.broadcast_object_list(box, src=0)
    return box[0]


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor: DTensors (FSDP2 / tensor parallel) are all-gathered (a collective)."""
    t = t.detach()
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def is_zero3(p: torch.Tensor) -> bool:
    return hasattr(p, "ds_id")


@contextlib.contextmanager
def zero3_gathered(params: list[torch.Tensor]):
    """DeepSpeed ZeRO-3: make the full parameters visible inside the block (a collective)."""
    zero = [p for p in params if is_zero3(p)]
    if not zero:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(zero, modifier_rank=None):
        yield


def fsdp_units(model) -> list:
    """The FSDP2 (`fully_shard`) modules inside `model`, outermost first; [] when it is not sharded."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - old torch
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def fsdp_unsharded(model):
    """FSDP2's counterpart of FSDP1's `summon_full_params`: every unit all-gathered once, kept whole.

    Inside the block the module holds plain full parameters, so `generate` (any number of forwards,
    different on each rank) and weight export run without further collectives; entering and leaving
    are collectives (every rank must enter). Costs one full copy of the weights while it lasts.
    Forwards inside do not reshard (`reshard_after_forward` is switched off for the block and the
    units' own settings restored after, including the root's automatic one).
    """
    units = fsdp_units(model)
    if units:
        # FSDP2 picks its root at the first forward; peft's `generate` enters inner units first (the
        # embeddings), which would then claim to be the root: initialise the real root now.
        units[0]._get_fsdp_state()._lazy_init()
    saved = []
    for u in units:
        state = u._get_fsdp_state()  # the settings `set_reshard_after_forward` changes, to put them back
        saved.append((state._auto_reshard_after_forward, [g.post_forward_mesh_info for g in state._fsdp_param_groups]))
        u.set_reshard_after_forward(False, recurse=False)
        u.unshard()
    try:
        yield
    finally:
        for u, (auto, infos) in zip(units, saved):
            u.reshard()
            state = u._get_fsdp_state()
            state._auto_reshard_after_forward = auto
            for g, info in zip(state._fsdp_param_groups, infos):
                g.post_forward_mesh_info = info


def broadcast_parameters(model) -> None:
    """Give every rank rank 0's parameters and buffers (a collective), as DDP does at construction.

    FSDP2 shards whatever each rank holds, so ranks that initialised differently (a LoRA adapter
    drawn from a per-rank RNG) would otherwise train a patchwork of their initial weights.
    """
    d = dist()
    if not d or d.get_world_size() == 1:
        return
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            d.broadcast(t.data, src=0)
