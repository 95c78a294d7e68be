"""Numerics (issue 7 §3): a non-finite loss or gradient skips the update, is logged, and after
`rl.max_nonfinite_steps` in a row the run stops with the reason. Real trainer, tiny model.

Injection point: `SelfPlayGame.play` is wrapped so that chosen steps return one sample with a NaN
advantage (the loss, then every gradient, becomes NaN), everything else unchanged.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import REPO
from typer.testing import CliRunner

from ssp.cli import app
from ssp.config import load_config
from ssp.game.play import SelfPlayGame
from ssp.training import checkpoint as ckpt
from ssp.training.trainer import Trainer

TINY = str(REPO / "configs" / "tiny.yaml")
FAST = ["rollout.attacker.max_new_tokens=8", "rollout.defender.max_new_tokens=8", "run.checkpoint_every=1"]


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """One torch thread for every test here (see conftest)."""


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def inject_nan(monkeypatch, steps: set[int] | None) -> list[int]:
    """Steps in `steps` (None: every step) get a NaN advantage on their first trainable sample."""
    real_play = SelfPlayGame.play
    injected: list[int] = []

    def play(self, step, replay, rng):
        result = real_play(self, step, replay, rng)
        if steps is None or step in steps:
            for s in result.samples:
                if s.completion_ids and s.advantage != 0.0:
                    s.advantage = float("nan")
                    injected.append(step)
                    break
        return result

    monkeypatch.setattr(SelfPlayGame, "play", play)
    return injected


def adapter(run, step):
    return load_file(run / "checkpoints" / f"step-{step:06d}" / "weights" / "adapter_model.safetensors")


def optimizer_state(run, step):
    folder = run / "checkpoints" / f"step-{step:06d}"
    return load_file(folder / "optimizer.safetensors"), json.loads((folder / "optimizer.json").read_text())


@pytest.mark.timeout(180)
def test_one_nan_update_is_skipped_logged_and_leaves_weights_untouched(tmp_path, monkeypatch):
    injected = inject_nan(monkeypatch, {2})
    run = tmp_path / "run"
    summary = Trainer(load_config(TINY, FAST + ["run.max_steps=3"]), run, progress=False).train()
    assert injected == [2]
    r = rows(run)
    assert [x["step"] for x in r] == [1, 2, 3] and summary["last_step"] == 3  # one bad step does not stop the run
    assert r[1]["nonfinite"] is True and r[1]["update_skipped"] is True
    assert r[1]["loss"] is None  # logged as null: metrics.jsonl stays valid JSON, no NaN
    assert all(x["nonfinite"] is False and x["update_skipped"] is False for x in (r[0], r[2]))
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-finite {c} written to metrics.jsonl"))
    # skipped means skipped: weights and optimizer state after step 2 equal those after step 1
    w1, w2, w3 = adapter(run, 1), adapter(run, 2), adapter(run, 3)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert any(not torch.equal(w2[k], w3[k]) for k in w2)  # and the next step trains again
    (t1, m1), (t2, m2) = optimizer_state(run, 1), optimizer_state(run, 2)
    assert all(torch.equal(t1[k], t2[k]) for k in t1) and m1 == m2
    assert all(torch.isfinite(t).all() for t in w3.values())


@pytest.mark.timeout(180)
def test_nonfinite_updates_in_a_row_stop_the_run_with_reason(tmp_path, monkeypatch):
    injected = inject_nan(monkeypatch, {2, 3, 4, 5, 6})
    run = tmp_path / "run"
    res = CliRunner().invoke(
        app,
        [
            "train",
            "-c",
            TINY,
            "-o",
            str(run),
            "--quiet",
            *sum((["--set", s] for s in FAST + ["run.max_steps=6", "rl.max_nonfinite_steps=2"]), []),
        ],
    )
    assert res.exit_code == 2, (res.output, res.exception)
    assert "step 3: 2 updates in a row had a non-finite loss or gradient" in res.output
    assert injected == [2, 3]
    r = rows(run)
    assert [x["step"] for x in r] == [1, 2, 3]
    assert [x["nonfinite"] for x in r] == [False, True, True]
    assert [x["update_skipped"] for x in r] == [False, True, True]
    # the last checkpoint before the stop is complete and holds the step-1 weights (nothing was applied since)
    latest = ckpt.latest_checkpoint(run)
    assert latest is not None and ckpt.verify_checkpoint(latest)
    w1 = adapter(run, 1)
    assert all(torch.equal(w1[k], v) for k, v in load_file(latest / "weights" / "adapter_model.safetensors").items())


@pytest.mark.timeout(180)
def test_exploding_learning_rate_stops_the_run_with_reason(tmp_path):
    """rl.learning_rate=1e30: the first update is finite but blows the weights up; the next forward
    passes give inf/NaN logits. The run must skip those updates and stop with the stated reason.

    Today sampling crashes first, a traceback instead of the reason: `torch.multinomial` ("probability
    tensor contains either inf, nan or element < 0"), or with the CPU inverse-CDF sampler an out-of-range
    token id (IndexError). See docs/reliability.md, "Open findings", F7."""
    run = tmp_path / "run"
    res = CliRunner().invoke(
        app,
        [
            "train",
            "-c",
            TINY,
            "-o",
            str(run),
            "--quiet",
            *sum(
                (["--set", s] for s in FAST + ["run.max_steps=6", "rl.max_nonfinite_steps=2", "rl.learning_rate=1e30"]),
                [],
            ),
        ],
    )
    assert res.exit_code == 2, f"exit {res.exit_code}: {res.exception!r}"
    assert "updates in a row had a non-finite loss or gradient" in res.output
    r = rows(run)
    assert r[-1]["nonfinite"] is True and r[-1]["update_skipped"] is True
    assert all(x["loss"] is None or math.isfinite(x["loss"]) for x in r)
