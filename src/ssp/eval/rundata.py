"""Reading the folders the program writes, for reports and the attack corpus: a training run (metrics, exchanges,
summary, config, experience pool) and an evaluation folder (results.json, generations.jsonl)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssp.records import read_log


class PoolReadError(RuntimeError):
    """The run's pool file exists but cannot be read (e.g. written by another ssp version)."""


@dataclass
class PoolView:
    top: list[dict[str, Any]] = field(default_factory=list)  # live entries by UCB, best first
    stats: dict[str, Any] | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)  # every entry, retired ones included


def read_pool(run: Path, top_n: int = 20) -> PoolView:
    """A run's experience pool, opened read-only with the run's replay settings; empty when it has none."""
    path = run / "pool.sqlite"
    if not path.is_file():
        return PoolView()
    from ssp.config import ReplayConfig, load_yaml
    from ssp.replay.pool import ExperiencePool

    tree = load_yaml(run / "config.yaml") if (run / "config.yaml").is_file() else {}
    cfg = ReplayConfig.model_validate(tree.get("replay", {}))
    try:
        with ExperiencePool(path, cfg, readonly=True) as pool:
            return PoolView(
                top=[e.to_dict() for e in pool.top(top_n)],
                stats=pool.stats(),
                entries=[e.to_dict() for e in pool.all_entries()],
            )
    except Exception as e:  # noqa: BLE001 - a pool written by another ssp version must not lose the report
        raise PoolReadError(f"{path}: cannot read the experience pool ({type(e).__name__}: {e})") from e


@dataclass
class TrainingRun:
    path: Path
    rows: list[dict[str, Any]]  # metrics.jsonl
    exchanges: list[dict[str, Any]]  # exchanges.jsonl
    summary: dict[str, Any]  # summary.json ({} while the run is unfinished)
    config_text: str  # config.yaml as written


def read_training_run(run: Path) -> TrainingRun:
    summary = run / "summary.json"
    config = run / "config.yaml"
    return TrainingRun(
        path=run,
        rows=read_log(run / "metrics.jsonl"),
        exchanges=read_log(run / "exchanges.jsonl"),
        summary=json.loads(summary.read_text(encoding="utf-8")) if summary.is_file() else {},
        config_text=config.read_text(encoding="utf-8") if config.is_file() else "",
    )


def read_eval_folder(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(results.json, generations.jsonl records) of an `ssp eval` folder."""
    results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    return results, read_log(folder / "generations.jsonl")
