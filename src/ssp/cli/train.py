"""`ssp train`: run Safety Self-Play."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer
from rich.markup import escape

from ssp.cli.common import config_from_cli, console, fail

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file, or a preset name: tiny, demo, cpu-small, ...")
SetOpt = typer.Option(None, "--set", "-s", help="override a key, e.g. --set run.max_steps=2 (repeatable)")


def train(
    output: Path = typer.Option(..., "--output", "-o", help="run folder (metrics, exchanges, pool, checkpoints)"),
    config: Path = ConfigOpt,
    overrides: list[str] = SetOpt,
    resume: bool = typer.Option(False, "--resume", help="continue from the last complete checkpoint in OUTPUT"),
    quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
) -> None:
    """Train one policy as Attacker and Defender with a judge and reflective UCB replay."""
    from ssp.game.seeds import SeedError
    from ssp.training.trainer import Trainer, TrainingError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = config_from_cli(config, overrides)
    try:
        summary = Trainer(cfg, output, resume=resume, progress=not quiet).train()
    except (SeedError, TrainingError, ValueError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted[/]; resume with: ssp train --output {escape(str(output))} --resume")
        raise typer.Exit(130) from None
    console.print_json(json.dumps(summary))
    summary_path = Path(output) / "summary.json"
    console.print(f"run folder: [bold]{escape(str(output))}[/]  summary: [bold]{escape(str(summary_path))}[/]")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
