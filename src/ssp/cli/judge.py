"""`ssp judge`: score a CSV/JSONL file of exchanges with any registered judge, compare two judges,
or train the `learned` judge.

    ssp judge --input ../shared/data/xstest_completions_llama2orig.csv --response-col completion \\
              --judge heuristic --output OUT.jsonl --label-col final_label
    ssp judge --input FILE --response-col completion --compare heuristic learned --output DISAGREE.jsonl
    ssp judge fit --input A.csv --response-col completion --label-col final_label \\
              --unsafe-col type --unsafe-match '^contrast_' --output MODEL --eval B.csv
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
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


def _options(options_file: Path | None, set_: list[str]) -> dict[str, Any]:
    from ssp.judges.table import TableError

    options: dict[str, Any] = {}
    if options_file is not None:
        if not options_file.exists():
            raise TableError(f"{options_file}: file not found (--options)")
        loaded = yaml.safe_load(options_file.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise TableError(f"{options_file}: judge options must be a mapping")
        options = loaded
    return _merge(options, parse_sets(set_))


def _ci(ci: Any) -> str:
    lo, hi = ci
    return "n/a" if math.isnan(lo) else f"[{lo:.3f}, {hi:.3f}]"


def print_agreement(m: dict[str, Any], title: str) -> None:
    """The agreement table of `ssp.judges.metrics.agreement`/`refusal_metrics`, as plain text."""
    print(
        f"  {title}: n {m['n']}, accuracy {_fmt(m['accuracy'])} {_ci(m['accuracy_ci'])}, "
        f"Cohen's kappa {_fmt(m['kappa'])}"
    )
    print(f"    {'label':<12} {'support':>7} {'precision':>9} {'95% CI':>16} {'recall':>7} {'95% CI':>16} {'F1':>6}")
    for lab, r in m["per_label"].items():
        print(
            f"    {lab:<12} {r['support']:>7} {r['precision']:>9.3f} {_ci(r['precision_ci']):>16} "
            f"{r['recall']:>7.3f} {_ci(r['recall_ci']):>16} {r['f1']:>6.3f}"
        )
    cm = m["confusion_matrix"]
    labels = list(cm)
    print(
        "    confusion (rows: reference, columns: judge): "
        + ", ".join(f"{t} -> " + " / ".join(f"{p} {cm[t].get(p, 0)}" for p in labels) for t in labels)
    )


def register(app: typer.Typer) -> None:
    """Add the `judge` command group (score, --compare, fit) to the `ssp` app."""
    judge_app = typer.Typer(help="Score exchanges with a judge, compare two judges, or train the learned judge.")
    app.add_typer(judge_app, name="judge")

    @judge_app.callback(invoke_without_command=True)
    def judge_cmd(
        ctx: typer.Context,
        input: Path | None = typer.Option(
            None, "--input", "-i", help="CSV/TSV, JSONL/JSON or Parquet file of exchanges."
        ),
        judge: str = typer.Option(
            "heuristic",
            "--judge",
            "-j",
            help="Judge name: heuristic, learned, llama_guard, wildguard, harmbench_classifier, "
            "openai_rubric, strongreject, ensemble, ...",
        ),
        compare: tuple[str, str] | None = typer.Option(
            None,
            "--compare",
            help="Two judges A B: verdicts side by side, agreement and kappa; --output gets the disagreements.",
        ),
        output: Path | None = typer.Option(
            None,
            "--output",
            "-o",
            help="Output JSONL: input columns + verdict columns (--compare: the rows where the judges disagree).",
        ),
        set_: list[str] = typer.Option([], "--set", "-s", help="Judge option key=value (YAML value); repeatable."),
        options_file: Path | None = typer.Option(None, "--options", help="YAML/JSON file of judge options."),
        prompt_col: str = typer.Option("prompt", "--prompt-col", help="Column holding what the Defender saw."),
        response_col: str = typer.Option("response", "--response-col", help="Column holding the answer."),
        goal_col: str = typer.Option("goal", "--goal-col", help="Column holding the goal (default: the prompt)."),
        label_col: str | None = typer.Option(
            None,
            "--label-col",
            help="Human refusal label column: report accuracy, precision, "
            "recall, F1, kappa (Wilson intervals) and the confusion matrix.",
        ),
        harm_col: str | None = typer.Option(
            None, "--harm-col", help="Human harmful-answer label column (0/1): the same report for 'harmful'."
        ),
        batch_size: int = typer.Option(64, "--batch-size", min=1, help="Exchanges per judge call."),
        limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N rows."),
        summary_json: Path | None = typer.Option(None, "--summary-json", help="Also write the summary here."),
    ) -> None:
        """Score exchanges with a judge and write verdicts (refused, harmful, score, valid, rationale)."""
        if ctx.invoked_subcommand is not None:
            return
        from rich.console import Console
        from rich.markup import escape

        from ssp.judges import build_judge
        from ssp.judges.table import TableError, label_metrics, read_table, to_inputs

        console = Console(stderr=True)
        try:
            if input is None or output is None:
                raise TableError("--input and --output are required")
            options = _options(options_file, set_)
            rows = read_table(input)
            if limit is not None:
                rows = rows[:limit]
            inputs = to_inputs(rows, str(input), prompt_col, response_col, goal_col)
            for col, flag in ((label_col, "--label-col"), (harm_col, "--harm-col")):
                if col is not None and rows and col not in rows[0]:
                    raise TableError(f"{input}: column {col!r} not found ({flag}); columns: {', '.join(rows[0])}")
            names = list(compare) if compare else [judge]
            # unknown names fail in build_judge, listing the available ones (plugins and module:callable included)
            judges = [build_judge(name, options if not compare else {}) for name in names]
        except (TableError, ValueError) as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(2) from None

        results = [_judge_table(j, rows, inputs, batch_size, console) for j in judges]
        metrics, harm_metrics = [], []
        try:
            if label_col is not None:
                metrics = [label_metrics(rows, label_col, str(input), out_rows) for out_rows, _ in results]
            if harm_col is not None:
                harm_metrics = [
                    label_metrics(rows, harm_col, str(input), out_rows, "harmful") for out_rows, _ in results
                ]
        except TableError as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(2) from None
        if compare:
            _report_compare(names, rows, results, metrics, harm_metrics, input, output, summary_json)
            return
        from ssp.judges.table import write_jsonl

        out_rows, summary = results[0]
        summary.metrics = metrics[0] if metrics else None
        write_jsonl(output, out_rows)

        print(f"judge {judge}: {summary.n} exchanges from {input} -> {output}")
        print(f"  valid {summary.valid}, invalid {summary.invalid}")
        print(
            f"  refused {summary.refused} (refusal rate {_fmt(summary.refusal_rate)}), "
            f"harmful {summary.harmful} (rate {_fmt(summary.harmful_rate)}), mean score {_fmt(summary.mean_score)}"
        )
        for reason, count in summary.invalid_reasons.items():
            print(f"  invalid: {count} x {reason}")
        if summary.metrics is not None:
            print_agreement(
                summary.metrics, f"'refused' vs {label_col!r} ({summary.metrics['excluded_invalid']} invalid excluded)"
            )
        if harm_metrics:
            print_agreement(
                harm_metrics[0], f"'harmful' vs {harm_col!r} ({harm_metrics[0]['excluded_invalid']} invalid excluded)"
            )
        if summary_json is not None:
            summary_json.parent.mkdir(parents=True, exist_ok=True)
            extra = {"harm_metrics": harm_metrics[0]} if harm_metrics else {}
            summary_json.write_text(
                json.dumps({"judge": judge, "input": str(input), **summary.to_dict(), **extra}, indent=2, default=str)
            )

    @judge_app.command("fit")
    def fit_cmd(
        input: list[Path] = typer.Option(..., "--input", "-i", help="Labelled training table(s); repeatable."),
        output: Path = typer.Option(
            ...,
            "--output",
            "-o",
            help="Model stem: writes STEM.safetensors + STEM.json (+ STEM-reliability.png with --eval).",
        ),
        label_col: str = typer.Option(..., "--label-col", help="Human refusal label column (as for `ssp judge`)."),
        harm_col: str | None = typer.Option(None, "--harm-col", help="0/1 harmful-answer label column."),
        unsafe_col: str | None = typer.Option(
            None,
            "--unsafe-col",
            help="Without --harm-col: harmful = answered (by --label-col) and "
            "this column matches --unsafe-match (XSTest: type).",
        ),
        unsafe_match: str = typer.Option("^contrast_", "--unsafe-match", help="Regex for --unsafe-col."),
        eval_: list[Path] = typer.Option([], "--eval", help="Held-out labelled table(s): metrics and calibration."),
        prompt_col: str = typer.Option("prompt", "--prompt-col"),
        response_col: str = typer.Option("response", "--response-col"),
        goal_col: str = typer.Option("goal", "--goal-col"),
        l2: float = typer.Option(0.1, "--l2", min=0.0, help="L2 penalty on the standardised weights."),
        plot: Path | None = typer.Option(
            None, "--plot", help="Reliability diagram PNG (with --eval; default STEM-reliability.png)."
        ),
    ) -> None:
        """Train the `learned` judge (logistic heads over MiniLM embeddings + refusal signals)."""
        from rich.console import Console
        from rich.markup import escape

        from ssp.judges.table import TableError

        console = Console(stderr=True)
        try:
            if harm_col is None and unsafe_col is None:
                raise TableError("give --harm-col, or --unsafe-col (harmful = answered an unsafe prompt)")
            spec = dict(
                label_col=label_col,
                harm_col=harm_col,
                unsafe_col=unsafe_col,
                unsafe_match=unsafe_match,
                prompt_col=prompt_col,
                response_col=response_col,
                goal_col=goal_col,
            )
            meta = fit_and_report(input, eval_, output, spec, l2, plot)
        except (TableError, ValueError, re.error) as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(2) from None
        print(
            f"learned judge: trained on {meta['rows']} rows of {', '.join(meta['train_files'])} -> {output}"
            ".safetensors / .json"
        )
        for name, res in meta.get("held_out", {}).items():
            print(f"  held-out {name}:")
            print_agreement(res["refused"], "refused")
            print_agreement(res["harmful"], "harmful")
            print(
                f"    ECE refused {res['calibration']['refused']['ece']:.3f}, "
                f"harmful {res['calibration']['harmful']['ece']:.3f}"
            )


def _judge_table(j: Any, rows: list[dict[str, Any]], inputs: list[Any], batch_size: int, console: Any) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ssp.judges.table import judge_rows

    show = len(inputs) > batch_size
    with Progress(
        TextColumn(f"judging ({j.name})"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not show,
        transient=True,
    ) as progress:
        task = progress.add_task("judge", total=len(inputs))
        return judge_rows(j, rows, inputs, batch_size, on_batch=lambda k: progress.advance(task, k))


def _report_compare(
    names: list[str],
    rows: list[dict[str, Any]],
    results: list[Any],
    metrics: list[dict[str, Any]],
    harm_metrics: list[dict[str, Any]],
    input: Path,
    output: Path,
    summary_json: Path | None,
) -> None:
    """Agreement of two judges on refused and harmful; the rows where they differ go to `output`."""
    from ssp.judges.metrics import agreement
    from ssp.judges.table import verdict_key, write_jsonl

    # each judge's verdict fields alone (an input label column of the same name stays out of the way)
    rows_a, rows_b = (
        [{k: out[verdict_key(row, k)] for k in VERDICT_KEYS} for row, out in zip(rows, res[0])] for res in results
    )
    both = [(ra, rb) for ra, rb in zip(rows_a, rows_b) if ra["valid"] and rb["valid"]]
    report: dict[str, Any] = {"judges": names, "input": str(input), "n": len(rows), "both_valid": len(both)}
    print(f"judges {names[0]} vs {names[1]} on {len(rows)} exchanges from {input} ({len(both)} valid for both)")
    for field in ("refused", "harmful"):
        m = agreement([str(ra[field]) for ra, _ in both], [str(rb[field]) for _, rb in both])
        report[field] = m
        print_agreement(m, f"{field}: {names[0]} (rows) vs {names[1]} (columns)")
    for name, m in zip(names, metrics):
        report[f"{name}_refused_vs_labels"] = m
        print_agreement(m, f"{name} 'refused' vs the labels")
    for name, m in zip(names, harm_metrics):
        report[f"{name}_harmful_vs_labels"] = m
        print_agreement(m, f"{name} 'harmful' vs the labels")
    disagree = []
    for row, ra, rb in zip(rows, rows_a, rows_b):
        if (ra["refused"], ra["harmful"], ra["valid"]) != (rb["refused"], rb["harmful"], rb["valid"]):
            disagree.append(
                {
                    **row,
                    **{f"{names[0]}.{k}": ra[k] for k in VERDICT_KEYS},
                    **{f"{names[1]}.{k}": rb[k] for k in VERDICT_KEYS},
                }
            )
    write_jsonl(output, disagree)
    report["disagreements"] = len(disagree)
    print(f"  {len(disagree)} disagreements -> {output}")
    if summary_json is not None:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(json.dumps(report, indent=2, default=str))


VERDICT_KEYS = ("refused", "harmful", "score", "valid", "rationale")
HARM_NAMES = ("harmful", "not harmful")


def _labelled(path: Path, spec: dict[str, Any]) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Judge inputs and 0/1 refused / harmful labels of one labelled table (errors name file and row)."""
    from ssp.judges.table import TableError, label_to_refused, read_table, to_inputs

    rows = read_table(path)
    inputs = to_inputs(rows, str(path), spec["prompt_col"], spec["response_col"], spec["goal_col"])
    refused, harmful = [], []
    pattern = re.compile(spec["unsafe_match"])
    for i, r in enumerate(rows):
        for col in (spec["label_col"], spec["harm_col"] or spec["unsafe_col"]):
            if col not in r:
                raise TableError(f"{path}: row {i + 1}: column {col!r} not found; columns: {', '.join(r)}")
        try:
            ref = label_to_refused(r[spec["label_col"]])
            harm = (
                label_to_refused(r[spec["harm_col"]])
                if spec["harm_col"]
                else (not ref) and bool(pattern.search(str(r[spec["unsafe_col"]])))
            )
        except ValueError as exc:
            raise TableError(f"{path}: row {i + 1}: {exc}") from None
        refused.append(ref)
        harmful.append(harm)
    return inputs, np.array(refused), np.array(harmful)


def fit_and_report(
    train: list[Path],
    held_out: list[Path],
    output: Path,
    spec: dict[str, Any],
    l2: float = 0.1,
    plot: Path | None = None,
) -> dict[str, Any]:
    """Train the learned judge on `train`, measure it on each `held_out` table, save the artefact."""
    from ssp.judges.embedder import TextEmbedder
    from ssp.judges.learned import calibration, features, file_sha256, fit_learned, pattern_files_for, reliability_plot
    from ssp.judges.metrics import refusal_metrics

    embedder = TextEmbedder.shared()
    patterns = pattern_files_for([str(p) for p in train])
    xs, rs, hs = [], [], []
    for path in train:
        inputs, r, h = _labelled(path, spec)
        xs.append(features(inputs, embedder, patterns))
        rs.append(r)
        hs.append(h)
    x, refused, harmful = np.vstack(xs), np.concatenate(rs), np.concatenate(hs)
    meta: dict[str, Any] = {
        "train_files": [p.name for p in train],
        "train_sha256": {p.name: file_sha256(p) for p in train},
        "rows": int(len(x)),
        "label_spec": spec,
        "pattern_files": patterns,
        "positives": {"refused": int(refused.sum()), "harmful": int(harmful.sum())},
    }
    model = fit_learned(x, refused, harmful, meta, l2)
    p_r, p_h = model.probabilities(x)
    model.meta["in_sample"] = {
        "refused": refusal_metrics(refused.tolist(), (p_r >= 0.5).tolist()),
        "harmful": refusal_metrics(harmful.tolist(), (p_h >= 0.5).tolist(), HARM_NAMES),
    }
    curves: dict[str, Any] = {}
    held: dict[str, Any] = {}
    for path in held_out:
        inputs, r, h = _labelled(path, spec)
        q_r, q_h = model.probabilities(features(inputs, embedder, patterns))
        cal = {"refused": calibration(q_r, r), "harmful": calibration(q_h, h)}
        held[path.name] = {
            "sha256": file_sha256(path),
            "calibration": cal,
            "refused": refusal_metrics(r.tolist(), (q_r >= 0.5).tolist()),
            "harmful": refusal_metrics(h.tolist(), (q_h >= 0.5).tolist(), HARM_NAMES),
        }
        curves[f"refused on {path.stem}"] = cal["refused"]
        curves[f"harmful on {path.stem}"] = cal["harmful"]
    if held:
        model.meta["held_out"] = held
        plot = reliability_plot(
            curves,
            plot or output.with_name(output.name + "-reliability.png"),
            f"learned judge trained on {', '.join(p.stem for p in train)}",
        )
        model.meta["reliability_plot"] = str(plot)
    model.save(output)
    return model.meta
