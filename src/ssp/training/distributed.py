"""Data parallelism for the game: shard rollouts and judging over ranks, gather results in order.

Every rank runs the same game logic on the same global results (so rewards, advantages and groups
are identical everywhere); only generation, judging and the gradient work are split. The experience
pool lives on rank 0 and its replay selection is broadcast. With one process all of this is a no-op.

Under FSDP (accelerate's FSDP2 preset) each rank holds a shard of every parameter; rollouts from the
HF backend run inside `fsdp_unsharded` (the weights all-gathered once per `generate` call, kept whole
while each rank generates its own share), and checkpoints are gathered to one consolidated file
(`ssp.training.checkpoint`). `enable_fsdp_on_cpu` lets the same FSDP path run on CPU processes (gloo).
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Sequence, TypeVar

from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, gather_object

from ssp import parallel

T = TypeVar("T")


class Ranks:
    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.rank = accelerator.process_index
        self.world = accelerator.num_processes
        self.is_main = accelerator.is_main_process

    def shard(self, items: Sequence[T]) -> list[T]:
        return list(items[self.rank :: self.world])

    def gather(self, local: list[T], total: int) -> list[T]:
        """Inverse of `shard`: every rank gets all `total` items in the original order."""
        if self.world == 1:
            return local
        parts: list[list[T]] = gather_object([local])
        return [parts[i % self.world][i // self.world] for i in range(total)]

    def broadcast(self, obj: Any) -> Any:
        """rank 0's value on every rank."""
        return parallel.broadcast(obj)

    def gather_values(self, value: Any) -> list[Any]:
        return [value] if self.world == 1 else gather_object([value])

    def micro_batches_needed(self, n_samples: int, micro_batch_size: int) -> int:
        """The most micro-batches any rank's shard needs (every rank must run as many backwards)."""
        sizes = [len(range(r, n_samples, self.world)) for r in range(self.world)]
        return max(math.ceil(s / micro_batch_size) for s in sizes)


def enable_fsdp_on_cpu(accelerator) -> bool:
    """Switch accelerate to its FSDP path on CPU processes when launched with an FSDP config.

    accelerate (1.15) turns `ACCELERATE_USE_FSDP` into FSDP only for GPU-like process types; on CPU
    it falls back to plain data parallelism (MULTI_CPU, gloo) and ignores the FSDP settings. torch's
    `fully_shard` itself works on CPU with gloo, so here the state is set to FSDP with the plugin the
    launcher configured (`FSDP_*` variables): `prepare`, `backward`, `clip_grad_norm_` then take
    accelerate's own FSDP2 code, the one a GPU run takes. Returns whether it switched.
    """
    state = accelerator.state
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or \
            state.distributed_type != DistributedType.MULTI_CPU:
        return False
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = FullyShardedDataParallelPlugin()
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as AcceleratorState does for GPUs
    return True


class ShardedEngine:
    """A rollout engine whose requests are split over ranks; results are gathered in request order.

    `unshard`: the FSDP-sharded policy the engine generates with (HF backend), all-gathered for each
    call; None where the engine holds its own weights (vLLM) or nothing is sharded.
    """

    def __init__(self, engine, ranks: Ranks, unshard=None):
        self.engine, self.ranks, self.unshard = engine, ranks, unshard
        self.encoder = engine.encoder

    def generate(self, requests, sampling, n: int = 1):
        whole = parallel.fsdp_unsharded(self.unshard) if self.unshard is not None else contextlib.nullcontext()
        with whole:
            local = self.engine.generate(self.ranks.shard(requests), sampling, n)
        return self.ranks.gather(local, len(requests))

    def refresh_weights(self) -> None:
        self.engine.refresh_weights()


class ShardedJudge:
    """A judge whose items are split over ranks; verdicts are gathered in item order."""

    def __init__(self, judge, ranks: Ranks):
        self.judge_impl, self.ranks = judge, ranks
        self.name = judge.name

    def judge(self, items):
        local = self.ranks.shard(items)
        return self.ranks.gather(self.judge_impl.judge(local) if local else [], len(items))
