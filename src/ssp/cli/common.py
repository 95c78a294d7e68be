"""Shared CLI plumbing: config loading with readable errors."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from ssp.config import ConfigError, SSPConfig, load_config

console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print an error and exit; the message is escaped since it holds user text (keys, paths)."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)  # no wrapping
    raise typer.Exit(code)


def config_from_cli(config: Path | None, overrides: list[str] | None) -> SSPConfig:
    try:
        return load_config(config, overrides or [])
    except ConfigError as e:
        fail(str(e))
        raise  # unreachable; keeps type checkers happy
