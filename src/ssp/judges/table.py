"""Judging a table of exchanges (CSV, JSONL, JSON or Parquet): the library side of `ssp judge`.

Input rows need a prompt and a response column (names configurable); the goal column is optional
and defaults to the prompt. Output rows keep every input column and add the verdict's fields.
Errors name the file, the line and the column.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssp.judges.base import Judge, JudgeInput, Verdict
from ssp.judges.metrics import refusal_metrics
from ssp.records import TABLE_SUFFIXES, RecordsError, read_records

#: Columns added to each output row.
VERDICT_COLUMNS = ("refused", "harmful", "score", "valid", "rationale", "on_topic")


class TableError(ValueError):
    """A problem with an input table; the message names the file (and line/column)."""


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a .csv/.tsv, .jsonl/.ndjson, .json or .parquet file (see `ssp.records.read_located`)."""
    p = Path(path)
    if p.suffix.lower() not in TABLE_SUFFIXES:  # a text file has prompts only, no responses to judge
        raise TableError(f"{p}: unsupported file type {p.suffix.lower()!r} (use {', '.join(TABLE_SUFFIXES)})")
    try:
        return read_records(p)
    except RecordsError as exc:
        raise TableError(str(exc)) from None


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def to_inputs(
    rows: list[dict[str, Any]],
    source: str,
    prompt_col: str = "prompt",
    response_col: str = "response",
    goal_col: str | None = "goal",
) -> list[JudgeInput]:
    """Build judge inputs; a missing required column raises TableError naming it and the file."""
    if not rows:
        return []
    columns = list(rows[0].keys())
    for col, what in ((prompt_col, "--prompt-col"), (response_col, "--response-col")):
        if col not in columns:
            raise TableError(f"{source}: column {col!r} not found ({what}); columns: {', '.join(columns)}")
    goal_key = goal_col if goal_col is not None and goal_col in columns else None
    out = []
    for i, r in enumerate(rows):
        for col in (prompt_col, response_col):
            if col not in r:
                raise TableError(f"{source}: row {i + 1} has no column {col!r}")
        prompt = _text(r[prompt_col])
        goal = _text(r.get(goal_key)) if goal_key is not None else ""
        out.append(JudgeInput(goal=goal or prompt, prompt=prompt, response=_text(r[response_col])))
    return out


_REFUSED = {"1", "true", "yes", "y", "refused", "refusal", "refuse"}
_ANSWERED = {"0", "false", "no", "n", "answered", "complied", "compliance", "comply"}


def label_to_refused(value: Any) -> bool:
    """Human label -> refused? Accepts booleans/0/1/yes/no, 'refused'/'answered', and XSTest's
    final_label (1_full_compliance = answered; 2_full_refusal, 3_partial_refusal = refused)."""
    if isinstance(value, bool):
        return value
    s = _text(value).strip().lower()
    if s in _REFUSED or "refus" in s:
        return True
    if s in _ANSWERED or "complian" in s:
        return False
    raise ValueError(
        f"label {value!r} is neither a refusal (1/true/refused/*refusal*) nor an answer (0/false/answered/*compliance*)"
    )


@dataclass
class JudgeSummary:
    n: int = 0
    valid: int = 0
    invalid: int = 0
    refused: int = 0
    harmful: int = 0
    score_sum: float = 0.0
    metrics: dict[str, Any] | None = None
    invalid_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def refusal_rate(self) -> float:
        return self.refused / self.valid if self.valid else float("nan")

    @property
    def harmful_rate(self) -> float:
        return self.harmful / self.valid if self.valid else float("nan")

    @property
    def mean_score(self) -> float:
        return self.score_sum / self.valid if self.valid else float("nan")

    def add(self, v: Verdict) -> None:
        self.n += 1
        if not v.valid:
            self.invalid += 1
            key = v.rationale.split(":")[0][:80]
            self.invalid_reasons[key] = self.invalid_reasons.get(key, 0) + 1
            return
        self.valid += 1
        self.refused += int(v.refused)
        self.harmful += int(v.harmful)
        self.score_sum += float(v.score)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "n": self.n,
            "valid": self.valid,
            "invalid": self.invalid,
            "refused": self.refused,
            "harmful": self.harmful,
            "refusal_rate": self.refusal_rate,
            "harmful_rate": self.harmful_rate,
            "mean_score": self.mean_score,
            "invalid_reasons": dict(self.invalid_reasons),
        }
        if self.metrics is not None:
            d["metrics"] = self.metrics
        return d


def verdict_columns(v: Verdict) -> dict[str, Any]:
    score = None if (isinstance(v.score, float) and math.isnan(v.score)) else v.score
    return {
        "refused": v.refused,
        "harmful": v.harmful,
        "score": score,
        "valid": v.valid,
        "rationale": v.rationale,
        "on_topic": v.on_topic,
    }


def verdict_key(row: dict[str, Any], name: str) -> str:
    """The output column of verdict field `name` for an input row: `judge_<name>` where the row has `name`."""
    return f"judge_{name}" if name in row else name


def judge_rows(
    judge: Judge,
    rows: list[dict[str, Any]],
    inputs: list[JudgeInput],
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[dict[str, Any]], JudgeSummary]:
    """Judge in batches; returns output rows (input columns + verdict columns) and a summary. A verdict column
    whose name the input already uses (a `harmful` or `refused` label) is written as `judge_<name>`, so the
    label survives next to the verdict."""
    summary = JudgeSummary()
    out: list[dict[str, Any]] = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        try:
            verdicts = judge.judge(chunk)
            if len(verdicts) != len(chunk):
                raise RuntimeError(f"judge returned {len(verdicts)} verdicts for {len(chunk)} inputs")
        except Exception as exc:  # noqa: BLE001 - a judge bug must not lose the whole table
            verdicts = [Verdict.invalid(f"judge error: {type(exc).__name__}: {exc}")] * len(chunk)
        for row, v in zip(rows[start : start + batch_size], verdicts):
            summary.add(v)
            out.append({**row, **{verdict_key(row, k): x for k, x in verdict_columns(v).items()}})
        if on_batch:
            on_batch(len(chunk))
    return out, summary


def label_metrics(
    rows: list[dict[str, Any]],
    label_col: str,
    source: str,
    verdict_rows: Iterable[dict[str, Any]],
    field: str = "refused",
) -> dict[str, Any]:
    """Agreement of the verdict's `field` (refused or harmful) with a human label column (0/1, yes/no,
    or XSTest's final_label for refused); invalid verdicts are excluded and counted."""
    truth: list[bool] = []
    pred: list[bool] = []
    excluded = 0
    for i, (row, out) in enumerate(zip(rows, verdict_rows)):
        if label_col not in row:
            raise TableError(f"{source}: column {label_col!r} not found")
        try:
            t = label_to_refused(row[label_col])
        except ValueError as exc:
            raise TableError(f"{source}: row {i + 1}, column {label_col!r}: {exc}") from None
        if not out[verdict_key(row, "valid")]:
            excluded += 1
            continue
        truth.append(t)
        pred.append(bool(out[verdict_key(row, field)]))
    m = refusal_metrics(truth, pred, ("refused", "answered") if field == "refused" else (field, f"not {field}"))
    m["excluded_invalid"] = excluded
    return m


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows as JSONL atomically (temp file + rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
    tmp.replace(p)
