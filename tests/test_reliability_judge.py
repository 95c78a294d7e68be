"""Judge faults during training (issue 7 §2): a real `openai_rubric` judge against a local fault server.

* Invalid verdicts are excluded from the update, counted in metrics (`judge_invalid`) and logged.
* Above `judge.max_invalid_share` the run stops with the reason and exit code 2; the last
  checkpoint and the experience pool are left exactly as they were; `--resume` recovers.
* Retries are bounded: the server counts the attempts made for every item.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from tests.conftest import REPO
from tests.fixtures.reliability.fault_server import FaultServer, closed_port, judge_options
from typer.testing import CliRunner

from ssp.cli import app
from ssp.config import load_config
from ssp.game.prompts import parse_attack
from ssp.judges import JudgeInput, build_judge
from ssp.judges.embedder import clean_text
from ssp.training import checkpoint as ckpt
from ssp.training import trainer as trainer_mod
from ssp.training.trainer import Trainer

TINY = str(REPO / "configs" / "tiny.yaml")
RETRIES = 2
FAST = [
    "rollout.attacker.max_new_tokens=8",
    "rollout.defender.max_new_tokens=8",
    "game.intent_gate=false",
    "run.checkpoint_every=1",
    "run.log_exchanges=1000",
    "judge.name=openai_rubric",
    # the paper's rewards: with the fault server's uniform scores they fill the pool within two steps
    "game.rewards.scheme=zero_sum",
]
FIGURES: Counter = Counter()  # printed at the end of the module (copied into docs/reliability.md)


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """One torch thread for every test here (see conftest)."""


def overrides(base_url: str, max_steps: int, **options) -> list[str]:
    opts = judge_options(base_url, max_retries=RETRIES, **options)
    return [*FAST, f"run.max_steps={max_steps}", f"judge.options={json.dumps(opts)}"]


def cli(run: Path, sets: list[str], resume: bool = False):
    args = ["train", "-c", TINY, "-o", str(run), "--quiet", *(["--resume"] if resume else [])]
    for s in sets:
        args += ["--set", s]
    return CliRunner().invoke(app, args, env={"COLUMNS": "2000"})  # rich would wrap at 80 columns


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pool_dump(path: Path) -> list[tuple]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        entries = db.execute("SELECT * FROM entries ORDER BY id").fetchall()
        meta = db.execute("SELECT key, value FROM meta ORDER BY key").fetchall()
    return entries + [("meta",) + m for m in meta]


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def items_per_response(exchanges: list[dict]) -> Counter:
    """How many judge requests the run should have made per (cleaned) response text, first attempts only."""
    return Counter(clean_text(x["response"], 12000) for x in exchanges)


# ------------------------------------------------------------------------------ partial faults


@pytest.mark.timeout(300)
def test_partial_judge_faults_are_excluded_from_the_update_and_counted(tmp_path, monkeypatch):
    """3 of 8 responses meet a persistent fault (HTTP 500 / HTML body / unparseable judgment)."""
    trained: list[list] = []
    real_update = trainer_mod.grpo_update

    def spy(model, optimizer, samples, *args, **kwargs):
        trained.append(list(samples))
        return real_update(model, optimizer, samples, *args, **kwargs)

    monkeypatch.setattr(trainer_mod, "grpo_update", spy)
    run = tmp_path / "run"
    with FaultServer("mixed") as server:
        cfg = load_config(TINY, overrides(server.base_url, 3) + ["judge.max_invalid_share=1.0"])
        trainer = Trainer(cfg, run, progress=False)
        trainer.train()
        requests = list(server.requests)

    rows = read_jsonl(run / "metrics.jsonl")
    exchanges = read_jsonl(run / "exchanges.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert len(trained) == 3
    tok = trainer.tokenizer
    invalid_total = 0
    for row, samples in zip(rows, trained):
        step_ex = [x for x in exchanges if x["step"] == row["step"]]
        invalid = [x for x in step_ex if not x["verdict"]["valid"]]
        valid = [x for x in step_ex if x["verdict"]["valid"]]
        # counted: every judgment is logged (log_exchanges is large), and the metric matches
        assert row["judged"] == len(step_ex)
        assert row["judge_invalid"] == len(invalid)
        invalid_total += len(invalid)
        for x in invalid:
            assert x["outcome"] == "judge_invalid" and x["r_def"] is None and x["r_att"] is None
            assert math.isnan(x["verdict"]["score"])
        # the fault is deterministic per text: a text is never both valid and invalid
        bad_texts = {x["response"] for x in invalid}
        assert not bad_texts & {x["response"] for x in valid}
        # excluded from the update: no Defender sample answers with an invalid-judged text ...
        for s in samples:
            text = tok.decode(s.completion_ids, skip_special_tokens=True)
            if s.role == "defender":
                assert text not in bad_texts, f"step {row['step']}: trained on an unjudged answer {text!r}"
            else:
                # ... and every trained attack had at least one valid judgment (or was unparseable: reward 0)
                attack = parse_attack(text, True, accept_truncated=True)
                if attack is not None:
                    judged_ok = [x for x in valid if x["kind"] == "attack" and x["prompt"] == attack]
                    assert judged_ok, f"step {row['step']}: attacker trained on an unjudged attack {attack!r}"
    assert invalid_total > 0, "the fault server injected nothing: the test proves nothing"
    roles = Counter(s.role for samples in trained for s in samples)
    assert roles["defender"] > 0 and roles["attacker"] > 0, f"nothing was trained: the test proves nothing {roles}"
    FIGURES["partial: samples trained"] += sum(roles.values())

    # bounded retries: HTTP 500 items are tried 1 + max_retries times; others once (no retry needed or,
    # for an unparseable judgment, none useful); nothing is tried more often than 1 + max_retries.
    per_item = items_per_response(exchanges)
    seen = Counter(r["response"] for r in requests)
    fate = {r["response"]: r["fate"] for r in requests}
    assert set(seen) == set(per_item)
    for text, n in per_item.items():
        expected = n * (1 + RETRIES) if fate[text] == "500" else n
        if fate[text] == "garbage":  # see test_malformed_response_body_is_retried
            assert n <= seen[text] <= n * (1 + RETRIES)
            continue
        assert seen[text] == expected, (fate[text], text)
    FIGURES["partial: judge requests"] += len(requests)
    FIGURES["partial: invalid verdicts"] += invalid_total
    FIGURES["partial: judgments"] += len(exchanges)
    for f in ("500", "garbage", "unparseable"):
        FIGURES[f"partial: requests meeting {f}"] += sum(r["fate"] == f for r in requests)


def test_malformed_response_body_is_retried():
    """Issue 7 §2 lists malformed outputs among the faults that get bounded retries. A 200 with an
    HTML body (a gateway error page) is transient like a 502; today it is not retried at all."""
    with FaultServer("garbage") as server:
        judge = build_judge("openai_rubric", judge_options(server.base_url, max_retries=RETRIES))
        [verdict] = judge.judge([JudgeInput("a goal", "a prompt", "a response")])
        attempts = len(server.requests)
    assert not verdict.valid and "malformed response body" in verdict.rationale
    assert attempts == 1 + RETRIES, f"{attempts} attempt(s) for a malformed body, expected 1 + max_retries"


# ------------------------------------------------------------------------------ outages stop the run


FAULTS = {  # fault -> (server mode or None for a closed port, text expected in the invalid verdicts)
    "500": ("500", f"HTTP 500 after {RETRIES} retries"),
    "hang": ("hang", "timeout after 0.3s"),
    "refused": (None, "connection error"),
    "garbage": ("garbage", "malformed response body"),
    "unparseable": ("unparseable", "unparseable judgment"),
}


@pytest.mark.timeout(400)
def test_judge_outage_stops_the_run_with_reason_and_resume_recovers(tmp_path):
    run = tmp_path / "run"
    with FaultServer("ok") as server:
        res = cli(run, overrides(server.base_url, 2))
        assert res.exit_code == 0, res.output
        before = tree_digest(run / "checkpoints")
        pool_at_2 = pool_dump(run / "checkpoints" / "step-000002" / "pool.sqlite")
        assert len([e for e in pool_at_2 if e[0] != "meta"]) > 0, "the healthy steps should fill the pool"

        for fault, (mode, reason) in FAULTS.items():
            if mode is None:
                url = f"http://127.0.0.1:{closed_port()}/v1"
            else:
                server.set_mode(mode)
                url = server.base_url
            res = cli(run, overrides(url, 4, timeout_s=0.3 if mode == "hang" else 5.0), resume=True)
            # stops with the reason, non-zero exit, no traceback
            assert res.exit_code == 2, (fault, res.output, res.exception)
            assert "step 3:" in res.output and "judgments were invalid" in res.output, res.output
            assert "judge.max_invalid_share=0.5" in res.output
            rows = read_jsonl(run / "metrics.jsonl")
            assert [r["step"] for r in rows] == [1, 2, 3]
            assert rows[2]["judged"] > 0 and rows[2]["judge_invalid"] == rows[2]["judged"]
            # never train on unjudged data: nothing was left to train on
            assert rows[2]["update_skipped"] is True and rows[2]["update_tokens"] == 0
            step3 = [x for x in read_jsonl(run / "exchanges.jsonl") if x["step"] == 3]
            assert step3 and all(x["outcome"] == "judge_invalid" for x in step3)
            odd = [x["verdict"]["rationale"] for x in step3 if reason not in x["verdict"]["rationale"]]
            assert not odd, (fault, odd[:3])
            # checkpoint and pool intact: no checkpoint written or touched; the live pool is the step-2 one
            assert tree_digest(run / "checkpoints") == before
            assert ckpt.latest_checkpoint(run).name == "step-000002"
            assert pool_dump(run / "pool.sqlite") == pool_at_2
            # bounded retries, counted by the server
            if mode in ("500", "hang"):
                per_item = items_per_response(step3)
                seen = Counter(r["response"] for r in server.requests)
                assert seen == Counter({t: n * (1 + RETRIES) for t, n in per_item.items()}), fault
            elif mode == "unparseable":
                assert Counter(r["response"] for r in server.requests) == items_per_response(step3)
            FIGURES["outage: runs stopped"] += 1
            FIGURES["outage: invalid verdicts"] += len(step3)
            FIGURES["outage: requests"] += len(server.requests) if mode else 0

        # the judge works again: --resume continues from step 2 and finishes
        server.set_mode("ok")
        res = cli(run, overrides(server.base_url, 4), resume=True)
        assert res.exit_code == 0, res.output
        rows = read_jsonl(run / "metrics.jsonl")
        assert [r["step"] for r in rows] == [1, 2, 3, 4]
        assert all(r["judge_invalid"] == 0 for r in rows)
        assert ckpt.latest_checkpoint(run).name == "step-000004"
    print("\nreliability figures (judge faults):", json.dumps(dict(FIGURES), sort_keys=True))
