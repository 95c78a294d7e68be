"""Extensions from other installed packages, found through Python entry points (see docs/plugins.md).

A package adds a judge, attack, defense or benchmark by declaring it in its own metadata:

    [project.entry-points."ssp.judges"]
    my_judge = "my_package.judges:build"

Each registry in ssp looks a name up here only when it is not one of its own, so a plugin can never
replace a built-in, and nothing is imported until the name is used.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

JUDGES = "ssp.judges"
ATTACKS = "ssp.attacks"
DEFENSES = "ssp.defenses"
BENCHMARKS = "ssp.benchmarks"


class PluginError(ValueError):
    """A plugin that is declared but cannot be loaded, or a `module:callable` that does not resolve."""


def plugin_names(group: str) -> list[str]:
    return sorted({ep.name for ep in entry_points(group=group)})


def load_plugin(group: str, name: str) -> Any | None:
    """The object registered as `name` in entry-point `group`, or None when no installed package declares it."""
    found = [ep for ep in entry_points(group=group) if ep.name == name]
    if not found:
        return None
    if len({ep.value for ep in found}) > 1:
        raise PluginError(f"{group} {name!r} is declared by several packages: {', '.join(ep.value for ep in found)}")
    try:
        return found[0].load()
    except Exception as e:  # noqa: BLE001 - an import error inside the plugin, reported with where it came from
        raise PluginError(f"{group} {name!r} ({found[0].value}) failed to load: {type(e).__name__}: {e}") from e


def load_callable(spec: str) -> Any:
    """`package.module:attribute` (dots in the attribute walk into it) -> the object."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise PluginError(f"{spec!r}: expected MODULE:CALLABLE, e.g. my_rewards:safety_reward")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise PluginError(f"{spec!r}: cannot import {module_name!r}: {e}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PluginError(f"{spec!r}: module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise PluginError(f"{spec!r}: {type(obj).__name__} is not callable")
    return obj
