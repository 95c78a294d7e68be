"""Harm grading of the embedded judges against answers labelled by the rubric of docs/judges.md §3.

    python scripts/validate_harm_grading.py [--data-dir ../shared/data]
           [--json docs/results/judges-harm.json] [--markdown docs/results/judges-harm.md]

Three labelled sets (tests/fixtures/judges), each row `harmful` = 1 when the answer gives the requester
something to act on toward the goal:

* `hand-written`: harm_labels.jsonl, 106 answers written for 20 HarmBench validation behaviours by the person
  who wrote the specificity markers. In-sample.
* `SmolLM2 on HarmBench`: harm_labels_smollm2.jsonl, 100 answers of the embedded SmolLM2-135M-Instruct (base,
  warm-started and self-play models of docs/results-warmstart.md) to HarmBench validation behaviours under the
  direct, template and self attacks, labelled blind by an annotator who saw neither the judge nor its code.
  Nothing was fitted on it: out-of-sample.
* `Mistral-7B on XSTest unsafe`: harm_labels_xstest_mistral.jsonl, the 153 answers of Mistral-7B-Instruct to
  XSTest's unsafe (contrast) prompts that it did not fully refuse (the answers stay in
  ../shared/data/xstest_completions_mistralinstruct.csv; the file holds ids and labels), labelled blind the same
  way. The specificity grading's `sequence` and `means` markers were written from the heuristic's errors on its
  `dev` rows (the even ones): for that row the `test` half is the out-of-sample figure. The learned judge was
  trained on these answers with XSTest's own labels (compliance, not harm), so it has seen both halves.

The SmolLM2 set also checks refusal detection on a third model's answers, one no pattern was written from:
a row is refused when its kind is `refusal`, `refuse then redirect` or `refuse then specific` (XSTest counts
partial refusals as refusals too); printed as a second table and kept under "refusal" in the JSON.

Rows per judge: the heuristic with specificity grading (the default), with topicality grading (v1, what
`harm_grading: topicality` restores), and the learned judge's harm head.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from ssp.judges import build_judge
from ssp.judges.base import JudgeInput
from ssp.judges.metrics import agreement

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "judges"
JUDGES = {
    "heuristic (specificity, default)": ("heuristic", {}),
    "heuristic (topicality, v1)": ("heuristic", {"harm_grading": "topicality"}),
    "learned (harm head)": ("learned", {}),
}


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def labelled_sets(data_dir: Path) -> dict[str, list[tuple[JudgeInput, bool]]]:
    """name -> [(exchange, harmful label)]; the Mistral answers are joined from the shared XSTest file by id."""
    hand = [
        (JudgeInput(r["goal"], r["goal"], r["response"]), bool(r["harmful"]))
        for r in _jsonl(FIXTURES / "harm_labels.jsonl")
    ]
    smol = [
        (JudgeInput(r["goal"], r["prompt"], r["response"]), bool(r["harmful"]))
        for r in _jsonl(FIXTURES / "harm_labels_smollm2.jsonl")
    ]
    source = data_dir / "xstest_completions_mistralinstruct.csv"
    with source.open(encoding="utf-8", newline="") as f:
        answers = {row["id"]: row for row in csv.DictReader(f)}
    sets = {"hand-written (in-sample)": hand, "SmolLM2 on HarmBench (out-of-sample)": smol}
    labels = _jsonl(FIXTURES / "harm_labels_xstest_mistral.jsonl")
    missing = [r["id"] for r in labels if r["id"] not in answers]
    if missing:
        raise SystemExit(f"{source}: ids {missing[:5]} of harm_labels_xstest_mistral.jsonl not found")
    for split, name in (
        ("dev", "Mistral-7B on XSTest unsafe, dev half"),
        ("test", "Mistral-7B on XSTest unsafe, test half"),
    ):
        sets[name] = [
            (
                JudgeInput(answers[r["id"]]["prompt"], answers[r["id"]]["prompt"], answers[r["id"]]["completion"]),
                bool(r["harmful"]),
            )
            for r in labels
            if r["split"] == split
        ]
    return sets


def measure(data_dir: Path) -> list[dict[str, Any]]:
    rows = []
    sets = labelled_sets(data_dir)
    for label, (name, options) in JUDGES.items():
        judge = build_judge(name, options)
        for set_name, items in sets.items():
            verdicts = judge.judge([x for x, _ in items])
            truth = [y for _, y in items]
            pred = [bool(v.valid and v.harmful) for v in verdicts]
            a = agreement(truth, pred)
            harmful = a["per_label"].get("True", {})
            rows.append(
                {
                    "judge": label,
                    "set": set_name,
                    "n": a["n"],
                    "harmful_labels": sum(truth),
                    "agreement": a["accuracy"],
                    "agreement_ci": a["accuracy_ci"],
                    "kappa": a["kappa"],
                    "harmful_recall": harmful.get("recall", 0.0),
                    "caught": sum(t and p for t, p in zip(truth, pred)),
                    "false_alarms": sum(p and not t for t, p in zip(truth, pred)),
                    "not_harmful_labels": len(truth) - sum(truth),
                }
            )
    return rows


REFUSAL_KINDS = ("refusal", "refuse then redirect", "refuse then specific")


def refusal_on_smollm2() -> list[dict[str, Any]]:
    """Refusal agreement of the heuristic and learned judges on the SmolLM2 set (refused = a refusal kind)."""
    rows = _jsonl(FIXTURES / "harm_labels_smollm2.jsonl")
    items = [JudgeInput(r["goal"], r["prompt"], r["response"]) for r in rows]
    truth = [r["kind"] in REFUSAL_KINDS for r in rows]
    out = []
    for name in ("heuristic", "learned"):
        pred = [bool(v.valid and v.refused) for v in build_judge(name, {}).judge(items)]
        a = agreement(truth, pred)
        out.append(
            {
                "judge": name,
                "n": a["n"],
                "refused_labels": sum(truth),
                **{k: a[k] for k in ("accuracy", "accuracy_ci", "kappa")},
            }
        )
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| judge | labelled set | n | agreement [95% CI] | κ | harmful caught | false alarms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["agreement_ci"]
        lines.append(
            f"| {r['judge']} | {r['set']} | {r['n']} | {r['agreement']:.3f} [{lo:.3f}, {hi:.3f}] | {r['kappa']:.3f} | "
            f"{r['caught']} / {r['harmful_labels']} | {r['false_alarms']} / {r['not_harmful_labels']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--json", type=Path, help="write the rows as JSON")
    parser.add_argument("--markdown", type=Path, help="write the table as Markdown")
    args = parser.parse_args()
    rows = measure(args.data_dir)
    refusal = refusal_on_smollm2()
    table = markdown(rows) + "\nRefusal detection on the SmolLM2 answers (out-of-sample model):\n\n"
    table += "| judge | n | refused (labels) | accuracy [95% CI] | κ |\n|---|---|---|---|---|\n"
    for r in refusal:
        lo, hi = r["accuracy_ci"]
        acc = f"{r['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"
        table += f"| {r['judge']} | {r['n']} | {r['refused_labels']} | {acc} | {r['kappa']:.3f} |\n"
    print(table)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "refusal": refusal}, indent=2) + "\n", encoding="utf-8")
    if args.markdown:
        args.markdown.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
