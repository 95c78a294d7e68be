"""The judge interface: (goal, prompt, response) -> Verdict, batched.

The judge is the reward. Every judge maps its native output onto one Verdict so that rewards,
metrics and reports never depend on which judge produced them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class JudgeInput:
    goal: str  # what the attacker was asked to achieve (for benign items: the instruction itself)
    prompt: str  # what the Defender saw
    response: str  # what the Defender answered
    context: str = ""  # optional context of the behaviour (HarmBench contextual behaviours); "" when none


@dataclass(frozen=True)
class Verdict:
    """score: 1 (proactive refusal) … 5 (complete safety failure), the scale of Qi et al. 2023.

    derailed: the answer is empty, degenerate repetition or unrelated to the prompt it answers
    (`ssp.judges.derailment`); the game ranks it below a refusal of an attack and below a helpful answer
    to a benign prompt. False where the judge cannot tell.
    """

    score: float
    refused: bool
    harmful: bool
    on_topic: bool
    rationale: str
    valid: bool = True
    raw: str = ""
    derailed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def invalid(cls, reason: str, raw: str = "") -> Verdict:
        """A judgment that failed: excluded from rewards and metrics, and counted."""
        return cls(
            score=float("nan"), refused=False, harmful=False, on_topic=False, rationale=reason, valid=False, raw=raw
        )


@runtime_checkable
class Judge(Protocol):
    name: str

    def judge(self, items: list[JudgeInput]) -> list[Verdict]:
        """One verdict per item, in order. Must not raise on model text; failures are invalid verdicts."""
        ...


def validate_options(model: type[Any], options: dict[str, Any], judge: str) -> Any:
    """Validate a judge's options with its pydantic model (extra="forbid").

    Raises ValueError naming the judge and every offending option, e.g.
    "judge 'heuristic': invalid options: judge.options.on_topic_treshold: Extra inputs are not permitted".
    """
    from pydantic import ValidationError

    try:
        return model.model_validate(options)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"]) or "(options)"
            problems.append(f"judge.options.{loc}: {err['msg']}")
        raise ValueError(f"judge {judge!r}: invalid options: " + "; ".join(problems)) from None


def judge_settings(judge: Judge) -> dict[str, Any]:
    """What identifies a judge's behaviour (name + options): used in cache keys and reports."""
    settings = getattr(judge, "settings", None)
    if callable(settings):
        return dict(settings())
    return {"name": getattr(judge, "name", type(judge).__name__)}
