"""The rollout-engine interface: chat requests in, sampled completions (text and token ids) out.

The trainer only talks to this interface, so HF `generate` on a laptop and vLLM on a GPU node are
interchangeable (config `rollout.backend`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ssp.config import SamplingConfig

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class ChatRequest:
    """A conversation to continue as the assistant; `prefill` starts the assistant's turn."""

    messages: Messages
    prefill: str = ""


@dataclass
class Completion:
    prompt_ids: list[int]  # the full prompt as the policy saw it (chat template + prefill)
    completion_ids: list[int]  # generated tokens, up to and including end-of-turn, no padding
    text: str  # decoded completion, special tokens removed
    finished: bool  # ended with end-of-turn (False: cut off by max_new_tokens)
    prompt_truncated: bool = False
    meta: dict = field(default_factory=dict)


class RolloutEngine(Protocol):
    def generate(self, requests: list[ChatRequest], sampling: SamplingConfig, n: int = 1) -> list[list[Completion]]:
        """`n` samples for each request, in request order."""
        ...

    def refresh_weights(self) -> None:
        """Called after each update; engines holding their own copy of the weights reload them."""
        ...
