"""`ssp warmstart`: self-distilled refusals and helpful answers learned by SFT before self-play (DESIGN.md §6)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer
from rich.markup import escape

from ssp.cli.common import config_from_cli, console, fail
from ssp.cli.train import ConfigOpt, SetOpt


def warmstart(
    output: Path = typer.Option(..., "--output", "-o", help="run folder (warmstart.json, kept pairs, checkpoint)"),
    config: Path = ConfigOpt,
    overrides: list[str] = SetOpt,
    quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
) -> None:
    """Answer harmful seeds in a refusal context and benign / borderline-safe seeds plainly, keep what the judge
    accepts, and learn it in the plain context. Start self-play from it with --set model.init_from=OUTPUT."""
    from ssp.game.seeds import SeedError
    from ssp.training.trainer import TrainingError
    from ssp.training.warmstart import WARMSTART_FILE, run_warmstart

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = config_from_cli(config, overrides)
    try:
        summary = run_warmstart(cfg, output, progress=not quiet)
    except (SeedError, TrainingError, ValueError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]; nothing was saved: run the command again")
        raise typer.Exit(130) from None
    shown = {k: summary[k] for k in ("seeds", "tries", "kept", "acceptance_rate", "time_s")}
    shown["refusal_diversity"] = {k: v for k, v in summary["refusal_diversity"].items() if k != "top_openings"}
    shown["sft_loss"] = [summary["sft"]["first_loss"], summary["sft"]["last_loss"]]
    console.print_json(json.dumps(shown))
    console.print(
        f"checkpoint: [bold]{escape(summary['checkpoint'])}[/]  metrics: "
        f"[bold]{escape(str(Path(output) / WARMSTART_FILE))}[/]\nself-play from it: ssp train -c CONFIG "
        f"-o RUN --set model.init_from={escape(str(output))}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("warmstart")(warmstart)
