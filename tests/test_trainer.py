"""`ssp train` on the tiny model: run folder contents, checkpoints, resume with the pool as it was."""

import json
import sqlite3

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import REPO
from typer.testing import CliRunner

from ssp.cli import app
from ssp.config import load_config
from ssp.training import checkpoint as ckpt
from ssp.training.trainer import Trainer, TrainingError

TINY = str(REPO / "configs" / "tiny.yaml")


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def pool_rows(path):
    with sqlite3.connect(path) as db:
        return db.execute("SELECT id, attack, n_replays, mean_reward FROM entries ORDER BY id").fetchall()


def test_train_then_resume_adds_exactly_one_step(tmp_path):
    run = tmp_path / "run"
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["train", "-c", TINY, "-o", str(run), "--quiet", "--set", "run.max_steps=2", "--set", "run.checkpoint_every=1"],
    )
    assert res.exit_code == 0, res.output
    first = rows(run)
    assert [r["step"] for r in first] == [1, 2]
    for r in first:
        assert r["reward/attacker"] is not None and r["reward/defender"] is not None
        assert {"time/attacker_generation", "time/defender_generation", "time/judging", "time/update"} <= r.keys()
    assert any(not r["update_skipped"] for r in first), "the tiny config must exercise the update"
    latest = ckpt.latest_checkpoint(run)
    assert latest.name == "step-000002" and ckpt.verify_checkpoint(latest)
    assert (latest / "weights" / "adapter_model.safetensors").is_file()
    assert (run / "pool.sqlite").is_file() and (run / "exchanges.jsonl").stat().st_size > 0
    pool_at_2 = pool_rows(latest / "pool.sqlite")

    # Resume: one more step, starting from the checkpoint's pool and weights.
    res = runner.invoke(
        app,
        [
            "train",
            "-c",
            TINY,
            "-o",
            str(run),
            "--quiet",
            "--resume",
            "--set",
            "run.max_steps=3",
            "--set",
            "run.checkpoint_every=1",
        ],
    )
    assert res.exit_code == 0, res.output
    assert [r["step"] for r in rows(run)] == [1, 2, 3]
    after = pool_rows(run / "pool.sqlite")
    assert [r[1] for r in after][: len(pool_at_2)] == [r[1] for r in pool_at_2]
    assert json.loads((run / "summary.json").read_text())["steps_run"] == 1


def test_bf16_defaults_train_resume_and_keep_float32_weights(tmp_path):
    """The defaults (bf16 rollouts from the native engine, bf16 autocast updates) run, resume and keep
    float32 master weights."""
    run = tmp_path / "run"
    bf16 = ["--set", "rollout.dtype=bfloat16", "--set", "rl.compute_dtype=bfloat16", "--set", "rollout.backend=auto"]
    for steps, extra in ((2, []), (3, ["--resume"])):
        res = CliRunner().invoke(
            app,
            [
                "train",
                "-c",
                TINY,
                "-o",
                str(run),
                "--quiet",
                *extra,
                *bf16,
                "--set",
                f"run.max_steps={steps}",
                "--set",
                "run.checkpoint_every=1",
            ],
        )
        assert res.exit_code == 0, res.output
    assert [r["step"] for r in rows(run)] == [1, 2, 3]
    assert any(not r["update_skipped"] for r in rows(run))
    weights = load_file(ckpt.latest_checkpoint(run) / "weights" / "adapter_model.safetensors")
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in weights.values())


def test_resume_restores_weights_rng_and_pool_exactly(tmp_path):
    """Two steps straight == one step, crash, resume one step (same seed): identical metrics and weights."""
    straight, resumed = tmp_path / "a", tmp_path / "b"
    cfg = load_config(TINY, ["run.max_steps=2", "run.checkpoint_every=1"])
    Trainer(cfg, straight, progress=False).train()
    Trainer(load_config(TINY, ["run.max_steps=1", "run.checkpoint_every=1"]), resumed, progress=False).train()
    # Rows written after the checkpoint by a crashed run must be dropped on resume.
    with open(resumed / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 2, "partial": True}) + "\n{truncated")
    Trainer(cfg, resumed, resume=True, progress=False).train()
    a, b = rows(straight), rows(resumed)
    assert [r["step"] for r in b] == [1, 2]
    for key in ("reward/attacker", "reward/defender", "loss", "pool/size", "pool/replays_total"):
        assert a[1][key] == pytest.approx(b[1][key], rel=1e-5, abs=1e-7), key
    wa = load_file(ckpt.latest_checkpoint(straight) / "weights" / "adapter_model.safetensors")
    wb = load_file(ckpt.latest_checkpoint(resumed) / "weights" / "adapter_model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)
    assert pool_rows(straight / "pool.sqlite") == pool_rows(resumed / "pool.sqlite")


def test_partial_checkpoint_is_never_loaded(tmp_path):
    run = tmp_path / "run"
    Trainer(load_config(TINY, ["run.max_steps=1"]), run, progress=False).train()
    good = ckpt.latest_checkpoint(run)
    fake = run / "checkpoints" / "step-000009"
    fake.mkdir()
    (fake / "state.json").write_text('{"step": 9}')  # no manifest: a crash mid-write
    assert ckpt.latest_checkpoint(run) == good
    (good / "state.json").write_text('{"step": 1, "tampered": true}')  # hash mismatch
    assert ckpt.latest_checkpoint(run) is None


def test_full_finetune_checkpoint_round_trip(tmp_path):
    run = tmp_path / "run"
    cfg = load_config(TINY, ["run.max_steps=1", "model.finetune=full", "rl.kl_coef=0.05"])
    Trainer(cfg, run, progress=False).train()
    latest = ckpt.latest_checkpoint(run)
    assert list((latest / "weights").glob("*.safetensors"))
    Trainer(
        load_config(TINY, ["run.max_steps=2", "model.finetune=full", "rl.kl_coef=0.05"]),
        run,
        resume=True,
        progress=False,
    ).train()
    assert [r["step"] for r in rows(run)] == [1, 2]


def test_unwritable_output_and_bad_seed_file_fail_clearly(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TrainingError, match="not writable"):
        Trainer(load_config(TINY), blocker / "run", progress=False).train()
    res = CliRunner().invoke(
        app,
        [
            "train",
            "-c",
            TINY,
            "-o",
            str(tmp_path / "r"),
            "--quiet",
            "--set",
            f"game.harmful_seeds={tmp_path / 'none.csv'}",
        ],
    )
    assert res.exit_code == 2 and "harmful seed file not found" in res.output
