"""Judges by name: the built-in table, plugin registration and `build_judge`.

Apart from `base.py` so that the registry may know every judge (lazily, by module path) while the
judges import only `base.py`: no import circle.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ssp.judges.base import Judge
from ssp.judges.cache import CachedJudge, VerdictCache

JudgeFactory = Callable[[dict[str, Any]], Judge]

#: The built-in judges: name -> "module:factory", imported only when that judge is built, so this
#: module never imports the implementations (they import only base.py) and a missing optional dependency of
#: one judge does not break the others.
BUILTIN_JUDGES: dict[str, str] = {
    "heuristic": "ssp.judges.heuristic:build_heuristic",
    "llama_guard": "ssp.judges.guards:build_llama_guard",
    "wildguard": "ssp.judges.guards:build_wildguard",
    "harmbench_classifier": "ssp.judges.guards:build_harmbench_classifier",
    "openai_rubric": "ssp.judges.rubric:build_qi_rubric",
    "strongreject": "ssp.judges.rubric:build_strongreject",
    "ensemble": "ssp.judges.ensemble:build_ensemble",
    "learned": "ssp.judges.learned:build_learned",
}
_REGISTRY: dict[str, JudgeFactory] = {}


def register_judge(name: str) -> Callable[[JudgeFactory], JudgeFactory]:
    """Register a judge that is not built in (plugins, tests); it shadows a built-in of the same name."""

    def deco(factory: JudgeFactory) -> JudgeFactory:
        _REGISTRY[name] = factory
        return factory

    return deco


def available_judges() -> list[str]:
    """Built-in and registered judges and those of installed plugins (entry-point group `ssp.judges`)."""
    from ssp.plugins import JUDGES, plugin_names

    return sorted(set(BUILTIN_JUDGES) | set(_REGISTRY) | set(plugin_names(JUDGES)))


def _factory(name: str) -> JudgeFactory:
    """A registered judge, else a built-in, else an installed plugin's, else a TRL-style reward function given
    as `module:callable`."""
    from ssp.plugins import JUDGES, load_plugin

    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in BUILTIN_JUDGES:
        module, attr = BUILTIN_JUDGES[name].split(":")
        return getattr(importlib.import_module(module), attr)
    plugin = load_plugin(JUDGES, name)
    if plugin is not None:
        return plugin
    if ":" in name:
        from ssp.judges.reward_fn import reward_function_factory

        return reward_function_factory(name)
    raise ValueError(
        f"judge.name: unknown judge {name!r}; available: {', '.join(available_judges())}, "
        "or MODULE:CALLABLE for a TRL-style reward function"
    )


def build_judge(name: str, options: dict[str, Any] | None = None) -> Judge:
    """Build a judge by its name (built-in, registered, a plugin's, or `module:callable`); its own options are
    validated by the judge.

    The option `cache: PATH` works with every judge: verdicts are kept in an SQLite file keyed by a
    hash of the inputs and the judge's settings (see `ssp.judges.cache.CachedJudge`).
    """
    factory = _factory(name)
    opts = dict(options or {})
    cache_path = opts.pop("cache", None)
    judge = factory(opts)
    if cache_path:
        judge = CachedJudge(judge, VerdictCache(str(cache_path)))
    return judge
