"""One SSP step on the packaged SmolLM2-135M-Instruct (the embedded default), with a tiny batch."""

import json

import pytest
from typer.testing import CliRunner

from ssp.cli import app

pytestmark = pytest.mark.integration


def test_one_step_on_embedded_model(tmp_path):
    run = tmp_path / "run"
    args = [
        "train",
        "-o",
        str(run),
        "--quiet",
        "--set",
        "run.max_steps=1",
        "--set",
        "game.goals_per_step=1",
        "--set",
        "game.attacks_per_goal=2",
        "--set",
        "game.answers_per_prompt=2",
        "--set",
        "rollout.attacker.max_new_tokens=24",
        "--set",
        "rollout.defender.max_new_tokens=16",
        "--set",
        "game.accept_truncated_attacks=true",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert row["step"] == 1
    assert row["reward/attacker"] is not None and row["reward/defender"] is not None
    assert row["generated_tokens"] > 0
    assert (run / "checkpoints" / "step-000001" / "weights" / "adapter_model.safetensors").is_file()
    exchanges = [json.loads(line) for line in (run / "exchanges.jsonl").read_text().splitlines()]
    assert exchanges and all(e["verdict"]["score"] >= 1 for e in exchanges if e["verdict"]["valid"])
