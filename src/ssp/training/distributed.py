"""Data parallelism for the game: shard rollouts and judging over ranks, gather results in order.

Every rank runs the same game logic on the same global results (so rewards, advantages and groups
are identical everywhere); only generation, judging and the gradient work are split. The experience
pool lives on rank 0 and its replay selection is broadcast. With one process all of this is a no-op.

Under FSDP (accelerate's FSDP2 preset) each rank holds a shard of every parameter; rollouts from the
HF backend run inside `fsdp_unsharded` (the weights all-gathered once per `generate` call, kept whole
while each rank generates its own share), and checkpoints are gathered to one consolidated file
(`ssp.training.checkpoint`). `enable_sharding_on_cpu` lets the same FSDP and DeepSpeed paths run on CPU
processes (gloo).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from typing import Any, TypeVar

from accelerate.state import PartialState
from accelerate.utils import DeepSpeedPlugin, DistributedType, FullyShardedDataParallelPlugin, gather_object

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


def enable_sharding_on_cpu(accelerator) -> str | None:
    """Switch accelerate to its FSDP or DeepSpeed path on CPU processes launched with such a config.

    accelerate (1.15) turns `ACCELERATE_USE_FSDP` / `ACCELERATE_USE_DEEPSPEED` into FSDP / DeepSpeed
    only for GPU-like process types; on CPU it falls back to plain data parallelism (MULTI_CPU, gloo)
    and ignores those settings. torch's `fully_shard` and DeepSpeed's CPU accelerator both work on CPU
    with gloo, so here the state is set to the launched type with the plugin the launcher configured
    (`FSDP_*` / `ACCELERATE_DEEPSPEED_*` variables): `prepare`, `backward`, `clip_grad_norm_` then run
    accelerate's own FSDP2 / DeepSpeed code, the code a GPU run takes. Returns what it switched to.
    """
    state = accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        return None
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = FullyShardedDataParallelPlugin()
    elif os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        state.distributed_type = DistributedType.DEEPSPEED
        plugin = DeepSpeedPlugin()
        plugin.set_mixed_precision("no")  # precision comes from the DeepSpeed JSON (accelerate does the same)
        plugin.select(_from_accelerator_state=True)
        state.deepspeed_plugins = plugin
    else:
        return None
    PartialState._shared_state["distributed_type"] = state.distributed_type  # as AcceleratorState does for GPUs
    return state.distributed_type.value


def keep_later_models_whole(accelerator) -> None:
    """Under ZeRO-3, let models loaded after `prepare` (judges, the embedder) load as plain modules.

    accelerate's DeepSpeed plugin registers transformers' `HfDeepSpeedConfig` when selected, whatever
    `zero3_init_flag` says; while it is registered every `from_pretrained` runs under
    `deepspeed.zero.Init` and comes up partitioned, which only the DeepSpeed engine knows how to use.
    The policy is prepared by then, so the registration has done its job.
    """
    if accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3:
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()


class ShardedEngine:
    """A rollout engine whose requests are split over ranks; results are gathered in request order.

    `whole`: a context factory that makes the sharded policy whole for generation (FSDP2, ZeRO-3;
    see `generation_context`), entered once per `generate` call on every rank; None when nothing is
    sharded or the engine holds its own weights (vLLM).
    """

    def __init__(self, engine, ranks: Ranks, whole=None):
        self.engine, self.ranks, self.whole = engine, ranks, whole
        self.encoder = engine.encoder

    def generate(self, requests, sampling, n: int = 1):
        with self.whole() if self.whole is not None else contextlib.nullcontext():
            local = self.engine.generate(self.ranks.shard(requests), sampling, n)
        return self.ranks.gather(local, len(requests))

    def refresh_weights(self) -> None:
        self.engine.refresh_weights()


def generation_context(accelerator, model):
    """How the HF backend generates from a sharded policy, as a context factory (None: nothing to do).

    Ranks generate different numbers of batches and tokens, so no collective may run inside `generate`:
    the parameters are gathered once on entry and kept whole. FSDP2: `ssp.parallel.fsdp_unsharded`.
    DeepSpeed ZeRO-3: TRL's `unwrap_model_for_generation` (GatheredParameters over the whole model with
    ZeRO's per-module gather hooks taken off meanwhile, the `deepspeed` extra installs TRL). ZeRO-2
    shards only optimizer state and gradients: nothing to gather.
    """
    if accelerator.distributed_type == DistributedType.FSDP:
        return lambda: parallel.fsdp_unsharded(model)
    if accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3:
        from trl.models.utils import unwrap_model_for_generation

        return lambda: unwrap_model_for_generation(model, accelerator)
    return None


class ShardedJudge:
    """A judge whose items are split over ranks; verdicts are gathered in item order."""

    def __init__(self, judge, ranks: Ranks):
        self.judge_impl, self.ranks = judge, ranks
        self.name = judge.name

    def judge(self, items):
        local = self.ranks.shard(items)
        return self.ranks.gather(self.judge_impl.judge(local) if local else [], len(items))
