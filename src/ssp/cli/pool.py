"""`ssp pool show RUN`: the experience pool's hardest entries and their replay statistics."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ssp.cli.common import fail

pool_app = typer.Typer(help="Inspect a run's experience pool.", no_args_is_help=True)


@pool_app.command("show")
def show(
    run: Path = typer.Argument(..., help="run folder written by `ssp train`"),
    top: int = typer.Option(10, "--top", "-n", help="entries to list"),
    width: int = typer.Option(70, help="characters of each text shown"),
) -> None:
    """List the top entries by UCB score with their statistics."""
    from ssp.config import ReplayConfig, load_yaml
    from ssp.replay.pool import ExperiencePool

    path = run / "pool.sqlite"
    if not path.is_file():
        fail(f"{path}: no experience pool (is {run} a run folder written by `ssp train`?)")
    cfg_tree = load_yaml(run / "config.yaml") if (run / "config.yaml").is_file() else {}
    with ExperiencePool(path, ReplayConfig.model_validate(cfg_tree.get("replay", {})), readonly=True) as pool:
        stats = pool.stats()
        entries = pool.top(top)
    table = Table(title=f"experience pool of {run}: " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    for col in ("id", "ucb", "mean r_def", "replays", "score", "first", "goal", "attack", "judge rationale"):
        table.add_column(col, overflow="fold")
    for e in entries:
        d = e.to_dict()
        table.add_row(
            str(d["id"]),
            f"{d['ucb']:.3f}",
            f"{d['mean_reward']:.3f}",
            str(d["n_replays"]),
            f"{d['score']:.2f}",
            str(d["first_step"]),
            d["goal"][:width],
            d["attack"][:width],
            d["rationale"][:width],
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(pool_app, name="pool")
