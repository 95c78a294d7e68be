"""The `ssp` command line: each sub-command lives in its own module and registers itself here."""

from __future__ import annotations

import typer

from ssp.cli import evaluate, export, judge, pool, report, train, warmstart

app = typer.Typer(
    name="ssp",
    help="Safety Self-Play: train one model to be its own red-teamer and its own guard.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for module in (train, warmstart, pool, judge, evaluate, report, export):
    module.register(app)
