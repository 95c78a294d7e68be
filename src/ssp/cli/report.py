"""`ssp report` (HTML report of a training run or an eval folder) and `ssp export-attacks` (red-team corpus)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from ssp.cli.common import console, fail


def report(
    run: Path = typer.Argument(..., help="a training run folder (`ssp train -o`) or an eval folder (`ssp eval -o`)"),
    output: Path | None = typer.Option(None, "--output", "-o", help="HTML file (default: RUN/report.html)"),
    top: int = typer.Option(15, "--top", help="discovered attacks listed (training runs)"),
) -> None:
    """One self-contained HTML report: plots over steps, top discovered attacks (training) or results (eval)."""
    from ssp.eval.report import build_eval_report, build_training_report
    from ssp.eval.rundata import read_eval_folder

    if not run.is_dir():
        fail(f"{run}: not a folder")
    output = output or run / "report.html"
    if (run / "results.json").is_file():
        html = build_eval_report(*read_eval_folder(run))
        kind = "evaluation"
    elif (run / "metrics.jsonl").is_file() or (run / "pool.sqlite").is_file():
        html = build_training_report(run, top_n=top)
        kind = "training run"
    else:
        fail(f"{run}: neither a training run (metrics.jsonl) nor an eval folder (results.json)")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(html, encoding="utf-8")
    console.print(f"{kind} report: [bold]{escape(str(output))}[/] ({len(html) // 1024} KiB)", highlight=False)


def export_attacks(
    run: Path = typer.Argument(..., help="a training run folder, or an eval folder (generations.jsonl)"),
    output: Path = typer.Option(..., "--output", "-o", help="JSONL file to write (statistics go to <stem>.stats.json)"),
    include_direct: bool = typer.Option(False, "--include-direct", help="eval folders: also the `direct` prompts"),
    no_embeddings: bool = typer.Option(False, "--no-embeddings", help="skip the embedding-distance diversity metric"),
) -> None:
    """Every attack that broke the Defender (goal, attack, step, score, response excerpt), deduplicated."""
    from ssp.eval.corpus import export_attacks as export

    if not run.is_dir():
        fail(f"{run}: not a folder")
    try:
        stats = export(run, output, include_direct=include_direct, embed=not no_embeddings)
    except FileNotFoundError as e:
        fail(str(e))
    console.print_json(json.dumps(stats))
    console.print(
        f"{stats['attacks']} attack(s) written to [bold]{escape(str(output))}[/]; statistics in "
        f"{escape(str(output.with_name(output.stem + '.stats.json')))}",
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("report")(report)
    app.command("export-attacks")(export_attacks)
