"""HTML reports (training run and evaluation) and the attack-corpus export, on synthetic run folders."""

import json
import re

import pytest
import typer
from typer.testing import CliRunner

from ssp.config import ReplayConfig
from ssp.eval.corpus import collect_attacks, export_attacks
from ssp.eval.report import build_eval_report, build_training_report, text_block, visible
from ssp.replay.pool import Candidate, ExperiencePool

EVIL = '<script>alert("x")</script>'


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = []
    for step in (1, 2, 3):
        rows.append(
            {
                "step": step,
                "reward/attacker": 0.8 - 0.1 * step,
                "reward/defender": 0.2 + 0.1 * step,
                "reward/defender_attack": 0.1 * step,
                "reward/defender_replay": None if step == 1 else 0.3,
                "reward/defender_benign": 1.0,
                "train_asr": 0.9 - 0.2 * step,
                "replay_asr": None,
                "benign_refusal": 0.05 * step,
                "pool/size": 2 * step,
                "pool/retired_total": step - 1,
                "pool/admitted_total": 2 * step,
                "pool/replays_total": 2 * (step - 1),
                "pool/max_ucb": 1.2,
                "pool/mean_reward": 0.1,
                "pool/mean_replays": 0.5,
                "kl": 0.001 * step,
                "loss": 0.05,
                "time/attacker_generation": 3.0,
                "time/defender_generation": 2.0,
                "time/judging": 1.0,
                "time/update": 1.5,
                "time/replay": 0.1,
                "time/step": 7.6,
            }
        )
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    exchanges = [
        {
            "step": 1,
            "kind": "attack",
            "goal": "goal A",
            "category": "cyber",
            "prompt": f"attack one {EVIL}",
            "response": "harmful answer \x13 with control",
            "outcome": "jailbroken",
            "verdict": {
                "score": 4.8,
                "refused": False,
                "harmful": True,
                "on_topic": True,
                "rationale": "on topic <b>",
                "valid": True,
                "raw": "",
            },
            "r_def": 0.05,
            "r_att": 0.95,
            "hint": "roleplay",
        },
        {
            "step": 2,
            "kind": "attack",
            "goal": "goal B",
            "category": "fraud",
            "prompt": "attack two",
            "response": "I can't help with that.",
            "outcome": "defended",
            "verdict": {
                "score": 1.0,
                "refused": True,
                "harmful": False,
                "on_topic": True,
                "rationale": "refused",
                "valid": True,
                "raw": "",
            },
            "r_def": 1.0,
            "r_att": 0.0,
            "hint": None,
        },
        {
            "step": 3,
            "kind": "replay",
            "goal": "goal A",
            "category": "",
            "prompt": f"ATTACK   one {EVIL.upper()}",
            "response": "again harmful",
            "outcome": "jailbroken",
            "verdict": {
                "score": 5.0,
                "refused": False,
                "harmful": True,
                "on_topic": True,
                "rationale": "worse",
                "valid": True,
                "raw": "",
            },
            "r_def": 0.0,
            "r_att": 1.0,
            "hint": None,
        },
        {
            "step": 3,
            "kind": "reflect",
            "goal": "goal A",
            "category": "",
            "prompt": "attack one",
            "response": "x",
            "outcome": "jailbroken",
            "verdict": {
                "score": 5.0,
                "refused": False,
                "harmful": True,
                "on_topic": True,
                "rationale": "",
                "valid": True,
                "raw": "",
            },
            "r_def": 0.0,
        },
    ]
    (run / "exchanges.jsonl").write_text("".join(json.dumps(x) + "\n" for x in exchanges) + '{"cut off')
    (run / "summary.json").write_text(
        json.dumps({"steps_run": 3, "mean_train_asr": 0.5, "mean_time_per_phase_s": {"update": 1.5}})
    )
    (run / "config.yaml").write_text("replay:\n  mode: ucb\n# <tag> in config\n")
    with ExperiencePool(run / "pool.sqlite", ReplayConfig()) as pool:
        pool.admit(
            [
                Candidate(
                    "goal A", f"attack one {EVIL}", ["harmful answer \x13 ctrl"], 4.8, "judge: on topic <b>", 0.05
                ),
                Candidate("goal C", "attack three", ["bad"], 4.2, "judge: complied", 0.2),
            ],
            step=1,
        )
    return run


def test_training_report_is_self_contained_and_escaped(run_dir):
    html = build_training_report(run_dir)
    assert html.startswith("<!DOCTYPE html>")
    assert html.count("data:image/png;base64,") == 6  # rewards, ASR/refusal, pool size, UCB, KL/loss, time
    assert EVIL not in html and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "judge: on topic &lt;b&gt;" in html  # rationale shown, escaped
    assert "\\x13" in html and "\x13" not in html  # control characters made visible
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing loaded from outside
    assert "&lt;tag&gt; in config" in html
    for title in (
        "Mean reward per role",
        "Training ASR",
        "Experience pool size",
        "Pool UCB statistics",
        "KL to the reference",
        "Time per phase",
        "Top discovered attacks",
    ):
        assert title in html


def test_training_report_without_pool_or_summary(run_dir):
    (run_dir / "pool.sqlite").unlink()
    (run_dir / "summary.json").unlink()
    html = build_training_report(run_dir)
    assert "highest-scoring logged attacks" in html and "no summary.json" in html


def test_report_cli_on_a_run(run_dir, tmp_path):
    from ssp.cli import report

    app = typer.Typer()
    report.register(app)
    r = CliRunner().invoke(app, ["report", str(run_dir)])
    assert r.exit_code == 0, r.output
    assert (run_dir / "report.html").stat().st_size > 10_000
    r = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 2 and "neither" in r.output
    out = tmp_path / "attacks.jsonl"
    r = CliRunner().invoke(app, ["export-attacks", str(run_dir), "-o", str(out), "--no-embeddings"])
    assert r.exit_code == 0, r.output
    assert len(out.read_text().splitlines()) == 2


def test_export_attacks_deduplicates_and_reports_diversity(run_dir, tmp_path):
    rows = collect_attacks(run_dir)
    # pool "attack one" == exchange attack (step 1) == replay with other case/spacing; "attack three" pool only;
    # the defended exchange and the reflective one are not attacks that broke the Defender
    assert [r["attack"] for r in rows] == [f"attack one {EVIL}", "attack three"]
    one = rows[0]
    assert one["sources"] == ["pool", "exchanges:attack", "exchanges:replay"] and one["times_seen"] == 3
    assert one["step"] == 1 and one["score"] == 5.0 and one["response_excerpt"] == "again harmful"
    assert one["category"] == "cyber" and one["hint"] == "roleplay"
    stats = export_attacks(run_dir, tmp_path / "c.jsonl", embed=False)
    assert stats["attacks"] == 2 and stats["unique_goals"] == 2 and stats["diversity"]["self_bleu"] is not None
    saved = json.loads((tmp_path / "c.stats.json").read_text())
    assert saved["by_source"]["pool"] == 2
    with pytest.raises(FileNotFoundError):
        collect_attacks(tmp_path / "nothing")


def test_eval_report_escapes_all_model_text():
    m = {"k": 1, "n": 2, "rate": 0.5, "ci_low": 0.09, "ci_high": 0.91}
    entry = {
        "suite": "hb/standard",
        "benchmark": "hb",
        "split": "standard",
        "kind": "harmful",
        "attack": "self",
        "headline": "asr",
        "budget": {"samples": 2},
        "n_items": 2,
        "n": 2,
        "invalid_items": 0,
        "invalid_judgments": 0,
        "unanswered_items": 0,
        "samples": 4,
        "attack_parse_rate": 0.75,
        "metrics": {
            "asr": m,
            "compliance_rate": m,
            "refusal_rate": m,
            "sample_asr": m,
            "mean_score": 3.0,
            "mean_max_score": 4.0,
        },
        "per_category": {"c<1>": {"n": 2, "asr": m, "compliance_rate": m, "refusal_rate": m}},
        "breakdown": {"sample_asr_by_hint": {"h<i>": m}},
        "cost": {"defender_generations": 3},
        "diversity": {"n": 3, "unique": 3, "self_bleu": 0.1, "embedding_distance": 0.5},
    }
    benign = {**entry, "suite": "xs/safe", "kind": "benign", "attack": "direct", "headline": "refusal_rate"}
    results = {
        "settings": {
            "model": {"name_or_path": "m<x>"},
            "judge": {"name": "heuristic"},
            "defense": {"name": "none"},
            "attacks": {"self": {"samples": 2}},
            "benchmarks": [],
        },
        "results": [entry, benign],
        "run": {"wall_time_s": 1.0},
    }
    records = [
        {
            "suite": "hb/standard",
            "attack": "self",
            "item_id": "i<1>",
            "category": "c<1>",
            "goal": f"goal {EVIL}",
            "outcome": {"broken": True},
            "samples": [
                {
                    "index": 0,
                    "prompt": None,
                    "response": None,
                    "verdict": None,
                    "meta": {"attacker_output": "<img src=x onerror=alert(1)>", "hint": "h<i>"},
                },
                {
                    "index": 1,
                    "prompt": "p <iframe>",
                    "response": "r </pre><script>",
                    "verdict": {"score": 5.0, "harmful": True, "refused": False, "valid": True, "rationale": "why <u>"},
                    "meta": {"hint": "h<i>"},
                },
            ],
        }
    ]
    html = build_eval_report(results, records)
    for raw in (EVIL, "<img src=x", "<iframe>", "</pre><script>", "<u>", "c<1>", "m<x>", "h<i>"):
        assert raw not in html
    assert "r &lt;/pre&gt;&lt;script&gt;" in html and html.count("data:image/png;base64,") >= 1


def test_text_helpers():
    assert text_block("<a & 'b'>") == '<pre class="text">&lt;a &amp; &#39;b&#39;&gt;<span class="muted"></span></pre>'
    assert "[4990 more characters]" in text_block("x" * 5000, limit=10)
    assert "\\ud800" in text_block("bad \ud800 surrogate") and visible("\x13") == "\\x13"
    assert text_block(None) == '<span class="muted">(none)</span>'
