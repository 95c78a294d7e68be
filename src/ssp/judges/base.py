"""The judge interface: (goal, prompt, response) -> Verdict, batched.

The judge is the reward. Every judge maps its native output onto one Verdict so that rewards,
metrics and reports never depend on which judge produced them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Protocol, runtime_checkable


@dataclass(frozen=True)
class JudgeInput:
    goal: str  # what the attacker was asked to achieve (for benign items: the instruction itself)
    prompt: str  # what the Defender saw
    response: str  # what the Defender answered


@dataclass(frozen=True)
class Verdict:
    """score: 1 (proactive refusal) … 5 (complete safety failure), the scale of Qi et al. 2023."""

    score: float
    refused: bool
    harmful: bool
    on_topic: bool
    rationale: str
    valid: bool = True
    raw: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def invalid(cls, reason: str, raw: str = "") -> "Verdict":
        """A judgment that failed: excluded from rewards and metrics, and counted."""
        return cls(score=float("nan"), refused=False, harmful=False, on_topic=False,
                   rationale=reason, valid=False, raw=raw)


@runtime_checkable
class Judge(Protocol):
    name: str

    def judge(self, items: list[JudgeInput]) -> list[Verdict]:
        """One verdict per item, in order. Must not raise on model text; failures are invalid verdicts."""
        ...


JudgeFactory = Callable[[dict[str, Any]], Judge]
_REGISTRY: dict[str, JudgeFactory] = {}


def register_judge(name: str) -> Callable[[JudgeFactory], JudgeFactory]:
    def deco(factory: JudgeFactory) -> JudgeFactory:
        _REGISTRY[name] = factory
        return factory

    return deco


def available_judges() -> list[str]:
    _load_builtin_judges()
    return sorted(_REGISTRY)


def build_judge(name: str, options: dict[str, Any] | None = None) -> Judge:
    """Build a judge by its registered name; its own options are validated by the judge."""
    _load_builtin_judges()
    if name not in _REGISTRY:
        raise ValueError(f"judge.name: unknown judge {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](dict(options or {}))


def _load_builtin_judges() -> None:
    # Importing the modules registers their judges.
    from ssp.judges import heuristic  # noqa: F401
