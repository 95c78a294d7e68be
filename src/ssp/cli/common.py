"""Shared CLI plumbing: config loading with readable errors."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from ssp.config import ConfigError, SSPConfig, load_config

console = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Print an error and exit; the message is escaped since it holds user text (keys, paths).

    soft_wrap: the message goes out on one line whatever the terminal width, so a long path never splits a phrase
    (and scripts can grep it); the terminal wraps it for display.
    """
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def config_from_cli(config: Path | None, overrides: list[str] | None) -> SSPConfig:
    try:
        return load_config(config, overrides or [])
    except ConfigError as e:
        fail(str(e))
