"""`ssp judge`: score a CSV/JSONL file of exchanges with any registered judge.

    ssp judge --input ../shared/data/xstest_completions_llama2orig.csv --response-col completion \\
              --judge heuristic --output OUT.jsonl --label-col final_label
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import typer
import yaml

from ssp.config import apply_overrides


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """['a=1', 'b.c=[x, y]'] -> {'a': 1, 'b': {'c': ['x', 'y']}}; values are parsed as YAML."""
    return apply_overrides({}, pairs, "--set")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def register(app: typer.Typer) -> None:
    """Add the `judge` command to the `ssp` app."""

    @app.command("judge")
    def judge_cmd(
        input: Path = typer.Option(..., "--input", "-i", help="CSV/TSV, JSONL/JSON or Parquet file of exchanges."),
        judge: str = typer.Option("heuristic", "--judge", "-j",
                                  help="Judge name: heuristic, llama_guard, wildguard, harmbench_classifier, "
                                       "openai_rubric, strongreject, ensemble, ..."),
        output: Path = typer.Option(..., "--output", "-o", help="Output JSONL: input columns + verdict columns."),
        set_: list[str] = typer.Option([], "--set", "-s", help="Judge option key=value (YAML value); repeatable."),
        options_file: Optional[Path] = typer.Option(None, "--options", help="YAML/JSON file of judge options."),
        prompt_col: str = typer.Option("prompt", "--prompt-col", help="Column holding what the Defender saw."),
        response_col: str = typer.Option("response", "--response-col", help="Column holding the answer."),
        goal_col: str = typer.Option("goal", "--goal-col", help="Column holding the goal (default: the prompt)."),
        label_col: Optional[str] = typer.Option(None, "--label-col",
                                                help="Human refusal label column: report accuracy, precision, "
                                                     "recall and the confusion matrix for 'refused'."),
        batch_size: int = typer.Option(64, "--batch-size", min=1, help="Exchanges per judge call."),
        limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N rows."),
        summary_json: Optional[Path] = typer.Option(None, "--summary-json", help="Also write the summary here."),
    ) -> None:
        """Score exchanges with a judge and write verdicts (refused, harmful, score, valid, rationale)."""
        from rich.console import Console
        from rich.markup import escape
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from ssp.judges import build_judge
        from ssp.judges.table import TableError, judge_rows, label_metrics, read_table, to_inputs, write_jsonl

        console = Console(stderr=True)
        try:
            options: dict[str, Any] = {}
            if options_file is not None:
                if not options_file.exists():
                    raise TableError(f"{options_file}: file not found (--options)")
                loaded = yaml.safe_load(options_file.read_text(encoding="utf-8")) or {}
                if not isinstance(loaded, dict):
                    raise TableError(f"{options_file}: judge options must be a mapping")
                options = loaded
            options = _merge(options, parse_sets(set_))
            rows = read_table(input)
            if limit is not None:
                rows = rows[:limit]
            inputs = to_inputs(rows, str(input), prompt_col, response_col, goal_col)
            if label_col is not None and rows and label_col not in rows[0]:
                raise TableError(f"{input}: column {label_col!r} not found (--label-col); "
                                 f"columns: {', '.join(rows[0])}")
            j = build_judge(judge, options)  # unknown names fail here, listing the available ones
        except (TableError, ValueError) as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(2) from None

        show = len(inputs) > batch_size
        with Progress(TextColumn("judging"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, disable=not show, transient=True) as progress:
            task = progress.add_task("judge", total=len(inputs))
            out_rows, summary = judge_rows(j, rows, inputs, batch_size,
                                           on_batch=lambda k: progress.advance(task, k))
        if label_col is not None:
            try:
                summary.metrics = label_metrics(rows, label_col, str(input), out_rows)
            except TableError as exc:
                console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
                raise typer.Exit(2) from None
        write_jsonl(output, out_rows)

        print(f"judge {judge}: {summary.n} exchanges from {input} -> {output}")
        print(f"  valid {summary.valid}, invalid {summary.invalid}")
        print(f"  refused {summary.refused} (refusal rate {_fmt(summary.refusal_rate)}), "
              f"harmful {summary.harmful} (rate {_fmt(summary.harmful_rate)}), mean score {_fmt(summary.mean_score)}")
        for reason, count in summary.invalid_reasons.items():
            print(f"  invalid: {count} x {reason}")
        if summary.metrics is not None:
            m = summary.metrics
            cm = m["confusion"]
            print(f"  vs {label_col!r} (refused = positive; {m['excluded_invalid']} invalid excluded): "
                  f"accuracy {_fmt(m['accuracy'])}, precision {_fmt(m['precision'])}, recall {_fmt(m['recall'])}")
            print(f"    confusion: human refused -> judge refused {cm['tp']}, answered {cm['fn']}; "
                  f"human answered -> judge refused {cm['fp']}, answered {cm['tn']}")
        if summary_json is not None:
            summary_json.parent.mkdir(parents=True, exist_ok=True)
            summary_json.write_text(json.dumps({"judge": judge, "input": str(input), **summary.to_dict()},
                                               indent=2, default=str))
