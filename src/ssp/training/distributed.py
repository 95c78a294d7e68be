"""Data parallelism for the game: shard rollouts and judging over ranks, gather results in order.

Every rank runs the same game logic on the same global results (so rewards, advantages and groups
are identical everywhere); only generation, judging and the gradient work are split. The experience
pool lives on rank 0 and its replay selection is broadcast. With one process all of this is a no-op.
"""

from __future__ import annotations

import math
from typing import Any, Sequence, TypeVar

from accelerate.utils import broadcast_object_list, gather_object

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
        if self.world == 1:
            return obj
        box = [obj if self.is_main else None]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def gather_values(self, value: Any) -> list[Any]:
        return [value] if self.world == 1 else gather_object([value])

    def micro_batches_needed(self, n_samples: int, micro_batch_size: int) -> int:
        """The most micro-batches any rank's shard needs (every rank must run as many backwards)."""
        sizes = [len(range(r, n_samples, self.world)) for r in range(self.world)]
        return max(math.ceil(s / micro_batch_size) for s in sizes)


class ShardedEngine:
    """A rollout engine whose requests are split over ranks; results are gathered in request order."""

    def __init__(self, engine, ranks: Ranks):
        self.engine, self.ranks = engine, ranks
        self.encoder = engine.encoder

    def generate(self, requests, sampling, n: int = 1):
        return self.ranks.gather(self.engine.generate(self.ranks.shard(requests), sampling, n), len(requests))

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
