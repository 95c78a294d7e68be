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
    context: str = ""  # optional context of the behaviour (HarmBench contextual behaviours); "" when none


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
    """Built-in judges and those of installed plugins (entry-point group `ssp.judges`)."""
    from ssp.plugins import JUDGES, plugin_names

    _load_builtin_judges()
    return sorted(set(_REGISTRY) | set(plugin_names(JUDGES)))


def _judge_factory(name: str) -> JudgeFactory:
    """A registered judge, else an installed plugin's, else a TRL-style reward function given as `module:callable`."""
    from ssp.plugins import JUDGES, load_plugin

    if name in _REGISTRY:
        return _REGISTRY[name]
    plugin = load_plugin(JUDGES, name)
    if plugin is not None:
        return plugin
    if ":" in name:
        from ssp.judges.reward_fn import reward_function_factory

        return reward_function_factory(name)
    raise ValueError(f"judge.name: unknown judge {name!r}; available: {', '.join(available_judges())}, "
                     "or MODULE:CALLABLE for a TRL-style reward function")


def build_judge(name: str, options: dict[str, Any] | None = None) -> Judge:
    """Build a judge by its registered name (or a plugin's, or `module:callable`); the judge validates its options.

    The option `cache: PATH` works with every judge: verdicts are kept in an SQLite file keyed by a
    hash of the inputs and the judge's settings (see `ssp.judges.ensemble.CachedJudge`).
    """
    _load_builtin_judges()
    factory = _judge_factory(name)
    opts = dict(options or {})
    cache_path = opts.pop("cache", None)
    judge = factory(opts)
    if cache_path:
        from ssp.judges.ensemble import CachedJudge, VerdictCache

        judge = CachedJudge(judge, VerdictCache(str(cache_path)))
    return judge


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


def _load_builtin_judges() -> None:
    # Importing the modules registers their judges.
    from ssp.judges import ensemble, guards, heuristic, rubric  # noqa: F401
