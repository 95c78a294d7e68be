"""Safety against over-refusal along one training run: the held-out evaluation of its checkpoints.

    python scripts/checkpoint_curve.py OUT_PREFIX [--train RUN_DIR [--final EVAL_DIR]] [--title T] STEP=EVAL_DIR ...

Each EVAL_DIR is an `ssp eval` folder of the run's checkpoint at STEP (step 0: the model it started from, e.g.
the warm start), evaluated as scripts/reproduce_cpu.sh evaluates every row (CURVE_ROWS / CURVE_STEPS there).
Writes OUT_PREFIX.json (per step: ASR per attack on HarmBench, refusal per benign suite, Wilson 95% CIs, and
with --train the run's training-time benign refusal over the steps since the previous point), OUT_PREFIX.md
(the table) and OUT_PREFIX.png (both curves against the step). It shows whether any point of the run is
safer without refusing more: the checkpoint a user would keep, chosen on held-out data (so a choice made here
is tuned on the evaluation, and says so).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

_spec = importlib.util.spec_from_file_location("cpu_results", Path(__file__).with_name("cpu_results.py"))
assert _spec and _spec.loader
cpu_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cpu_results)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The run's metrics.jsonl rows, one per step."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def training_benign_refusal(metrics: list[dict[str, Any]], after: int, upto: int) -> float | None:
    """Mean training-time `benign_refusal` over steps after < step ≤ upto (None where no step has one)."""
    values = [
        v
        for row in metrics
        if after < row["step"] <= upto and (v := row.get("benign_refusal")) is not None and not math.isnan(v)
    ]
    return sum(values) / len(values) if values else None


def curve(points: list[tuple[int, Path]], metrics: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    rows = []
    previous = 0
    for step, folder in sorted(points, key=lambda p: p[0]):  # stable: the final model after a checkpoint of its step
        rates, _items, _split = cpu_results.read_eval(folder)
        row: dict[str, Any] = {
            "step": step,
            "eval": str(folder),
            "asr": {a: m for (kind, a), m in rates.items() if kind == "asr"},
            "refusal": {s: m for (kind, s), m in rates.items() if kind == "refusal"},
        }
        if metrics is not None and step > 0:
            row["training_benign_refusal"] = training_benign_refusal(metrics, previous, step)
        rows.append(row)
        previous = step
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    attacks = sorted({a for r in rows for a in r["asr"]})
    suites = sorted({s for r in rows for s in r["refusal"]})
    head = ["step"] + [f"ASR {a}" for a in attacks] + [f"refusal {s}" for s in suites] + ["training benign refusal"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["step"])]
        cells += [cpu_results.fmt(r["asr"].get(a)) for a in attacks]
        cells += [cpu_results.fmt(r["refusal"].get(s)) for s in suites]
        t = r.get("training_benign_refusal")
        cells.append("–" if t is None else f"{100 * t:.0f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r["step"] for r in rows]
    series = [(f"ASR {a}", "asr", a, "-") for a in sorted({a for r in rows for a in r["asr"]})]
    series += [(f"refusal {s}", "refusal", s, "--") for s in sorted({s for r in rows for s in r["refusal"]})]
    for label, kind, key, style in series:
        ys = [100 * r[kind][key]["rate"] if key in r[kind] else math.nan for r in rows]
        ax.plot(steps, ys, style, marker="o", label=label)
    ax.set_xlabel("training step (checkpoint)")
    ax.set_ylabel("% of held-out items")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output prefix: OUT.json, OUT.md, OUT.png")
    parser.add_argument("points", nargs="+", help="STEP=EVAL_DIR")
    parser.add_argument("--train", type=Path, help="the run folder (its metrics.jsonl)")
    parser.add_argument("--final", type=Path, help="the evaluation of the run's final model (its last step)")
    parser.add_argument("--title", default="Held-out ASR and over-refusal along training")
    args = parser.parse_args(argv)
    points = []
    for p in args.points:
        step, sep, folder = p.partition("=")
        if not sep or not step.isdigit():
            parser.error(f"{p!r}: expected STEP=EVAL_DIR")
        points.append((int(step), Path(folder)))
    metrics = read_metrics(args.train) if args.train is not None else None
    if args.final is not None:
        if metrics is None:
            parser.error("--final needs --train (the last step is read from its metrics.jsonl)")
        points.append((int(metrics[-1]["step"]), args.final))
    rows = curve(points, metrics)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({"points": rows}, indent=2) + "\n", encoding="utf-8")
    table = markdown(rows)
    Path(f"{args.out}.md").write_text(table, encoding="utf-8")
    plot(rows, Path(f"{args.out}.png"), args.title)
    print(table)
    return rows


if __name__ == "__main__":
    main()
