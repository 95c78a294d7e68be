"""The judge speed benchmark (benchmarks/judge_speed.py): its --quick run writes the result file and every
verdict, and its verdict check reports each changed field (no timing assertions)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import judge_speed  # noqa: E402


def test_quick_run_writes_results_and_verdicts(tmp_path: Path) -> None:
    out, verdicts = tmp_path / "judge_speed.json", tmp_path / "verdicts.jsonl"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "judge_speed.py"), "--quick", "--threads", "1"]
        + ["--output", str(out), "--verdicts-out", str(verdicts)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["benchmark"] == "judge_speed" and data["settings"]["quick"] is True
    n = data["settings"]["exchanges"]
    assert n == len(judge_speed.load_exchanges(None)) > 64
    for name in judge_speed.JUDGES:
        ms = data[f"{name}_ms_per_exchange"]
        assert isinstance(ms, float) and math.isfinite(ms) and ms > 0
        assert data["targets"][f"{name}_ms_per_exchange"] == judge_speed.TARGET_MS
    rows = [json.loads(line) for line in verdicts.read_text().splitlines()]
    assert len(rows) == 2 * n
    assert all(r["valid"] for r in rows)
    fields = {"judge", "source", "score", "refused", "harmful", "on_topic", "rationale", "valid", "raw", "derailed"}
    assert set(rows[0]) == fields
    assert judge_speed.check_verdicts(verdicts, rows) == []
    changed = [dict(r) for r in rows]
    changed[3]["score"] += 1.0
    changed[5]["rationale"] += "."
    diffs = judge_speed.check_verdicts(verdicts, changed)
    assert len(diffs) == 2 and ": score: " in diffs[0] and ": rationale: " in diffs[1]
    short = judge_speed.check_verdicts(verdicts, rows[:-1])
    assert short == [f"{verdicts}: {2 * n} recorded verdicts, {2 * n - 1} now"]
