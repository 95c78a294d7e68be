"""The model under test and the defense wrapped around it.

Every Defender answer in an evaluation goes through a `Defense`: it receives the attack prompts and
returns one answer each. A defense may rewrite the conversation (a system prompt, a reminder), sample
the model several times and aggregate (SmoothLLM), or call the judge; what it spent is reported per
answer (`generations`, `tokens`) so that its extra inference cost shows in results.json.

`none` is the deployed model as is: the attack as a plain user turn (`defender_request`, exactly what
the Defender sees in training), one generation. New defenses register with `@register_defense(name)`:

    @register_defense("self_reminder")
    def build(ctx: DefenseContext, options: dict) -> Defense: ...

and are then available as `ssp eval --defense self_reminder --defense-option key=value`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ssp.config import SamplingConfig
from ssp.game.prompts import defender_request
from ssp.judges.base import Judge
from ssp.rollout.base import ChatRequest, Completion


class TargetModel:
    """The model under test: a rollout engine plus the Defender's sampling settings."""

    def __init__(self, engine: Any, sampling: SamplingConfig, name: str = ""):
        self.engine = engine
        self.sampling = sampling
        self.name = name

    def generate(self, requests: list[ChatRequest], n: int = 1, sampling: SamplingConfig | None = None) -> list[list[Completion]]:
        if not requests:
            return []
        return self.engine.generate(requests, sampling or self.sampling, n=n)

    @property
    def tokenizer(self) -> Any:
        return getattr(self.engine, "tokenizer", None)


class AttackerModel:
    """A model playing the Attacker (the model under test itself, or another one): engine + sampling."""

    def __init__(self, engine: Any, sampling: SamplingConfig, name: str = ""):
        self.engine = engine
        self.sampling = sampling
        self.name = name

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        if not requests:
            return []
        return [out[0] for out in self.engine.generate(requests, self.sampling, n=1)]


@dataclass
class DefenseResponse:
    text: str
    finished: bool = True
    generations: int = 1  # model generations spent on this answer
    tokens: int = 0  # tokens generated for this answer, all generations together
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Defense(Protocol):
    name: str

    def settings(self) -> dict[str, Any]:
        """Name and options, recorded in results.json and the report."""
        ...

    def respond(self, prompts: list[str]) -> list[DefenseResponse]:
        """One answer per attack prompt, in order."""
        ...


@dataclass
class DefenseContext:
    target: TargetModel
    judge: Judge | None = None  # for defenses that check answers (SmoothLLM's jailbreak check)
    seed: int = 0


DefenseFactory = Callable[[DefenseContext, dict[str, Any]], Defense]
_DEFENSES: dict[str, DefenseFactory] = {}


def register_defense(name: str) -> Callable[[DefenseFactory], DefenseFactory]:
    def deco(factory: DefenseFactory) -> DefenseFactory:
        _DEFENSES[name] = factory
        return factory

    return deco


def available_defenses() -> list[str]:
    return sorted(_DEFENSES)


def build_defense(name: str, ctx: DefenseContext, options: dict[str, Any] | None = None) -> Defense:
    if name not in _DEFENSES:
        raise ValueError(f"--defense: unknown defense {name!r}; available: {', '.join(available_defenses())}")
    return _DEFENSES[name](ctx, dict(options or {}))


class NoDefense:
    """The model as deployed: the prompt as a plain user turn, one generation."""

    name = "none"

    def __init__(self, target: TargetModel):
        self.target = target

    def settings(self) -> dict[str, Any]:
        return {"name": self.name}

    def respond(self, prompts: list[str]) -> list[DefenseResponse]:
        outs = self.target.generate([defender_request(p) for p in prompts])
        return [DefenseResponse(text=o[0].text, finished=o[0].finished, generations=1,
                                tokens=len(o[0].completion_ids),
                                meta={"prompt_truncated": True} if o[0].prompt_truncated else {})
                for o in outs]


@register_defense("none")
def _build_none(ctx: DefenseContext, options: dict[str, Any]) -> Defense:
    if options:
        raise ValueError(f"defense 'none' takes no options, got {sorted(options)}")
    return NoDefense(ctx.target)
