"""FSDP (accelerate's FSDP2 preset, `configs/accelerate/fsdp.yaml`) on two CPU processes (gloo).

Greedy rollouts make a step's global batch independent of how it is split, so a 2-process FSDP run
must play the same game as one plain process (same rewards, same pool) and, with gradients
reduce-scattered instead of summed in one place, end within float-summation noise of the same
weights. Checkpoints are the same consolidated safetensors either way: a run killed under FSDP
resumes to the uninterrupted run's weights, and a checkpoint crosses world sizes in both directions.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.launch import (
    LOSS_TOL,
    WEIGHT_TOL,
    accelerate,
    checkpoints,
    final_weights,
    kill_when,
    max_difference,
    preset,
    run_to_end,
    sets,
    train_command,
)

STEPS = 3


def command(processes: int, out: Path, steps: int = STEPS, extra=()) -> list[str]:
    """One process: a plain run. Two: `accelerate launch` with the repository's FSDP preset, verbatim."""
    launcher = accelerate(processes, "--config_file", preset("fsdp.yaml")) if processes > 1 else None
    return train_command(out, *sets("run.checkpoint_every=1", f"run.max_steps={steps}"), *extra, launcher=launcher)


def run(processes: int, out: Path, steps: int = STEPS, extra=()):
    return run_to_end(command(processes, out, steps, extra), out)


def assert_same_game(one_rows, two_rows):
    assert [r["step"] for r in two_rows] == list(range(1, STEPS + 1))
    assert any(not r["update_skipped"] for r in two_rows)
    for a, b in zip(one_rows, two_rows, strict=True):
        for key in ("reward/attacker", "reward/defender", "pool/size", "pool/admitted", "update_tokens"):
            assert a[key] == b[key], (key, a["step"], a[key], b[key])
        assert a["loss"] == pytest.approx(b["loss"], **LOSS_TOL)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], **LOSS_TOL)


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp-lora")
    return {"one": (root / "one", *run(1, root / "one")), "fsdp": (root / "fsdp", *run(2, root / "fsdp"))}


@pytest.mark.timeout(900)
def test_fsdp_lora_matches_one_process(lora_runs):
    one_dir, one_rows, _ = lora_runs["one"]
    out, two_rows, two = lora_runs["fsdp"]
    assert two["distributed_type"] == "FSDP" and two["world_size"] == 2
    assert_same_game(one_rows, two_rows)
    assert max_difference(final_weights(one_dir, STEPS), final_weights(out, STEPS)) < WEIGHT_TOL
    # The checkpoint is peft's consolidated adapter, loadable anywhere.
    assert (out / "checkpoints" / f"step-{STEPS:06d}" / "weights" / "adapter_model.safetensors").is_file()


@pytest.mark.timeout(900)
def test_fsdp_full_finetune_matches_one_process(tmp_path):
    # kl_coef > 0: the frozen reference copy is used beside the sharded policy.
    extra = ["--set", "model.finetune=full", "--set", "rl.kl_coef=0.05", "--set", "rl.learning_rate=1e-4"]
    one_rows, _ = run(1, tmp_path / "one", extra=extra)
    two_rows, two = run(2, tmp_path / "fsdp", extra=extra)
    assert two["distributed_type"] == "FSDP"
    assert_same_game(one_rows, two_rows)
    assert max(r["kl"] for r in two_rows) > 0
    one_w, two_w = final_weights(tmp_path / "one", STEPS), final_weights(tmp_path / "fsdp", STEPS)
    assert "model.embed_tokens.weight" in two_w  # a full model, not an adapter
    assert max_difference(one_w, two_w) < WEIGHT_TOL


@pytest.mark.timeout(900)
def test_fsdp_run_killed_resumes_to_the_uninterrupted_weights(lora_runs, tmp_path):
    out = tmp_path / "killed"
    kill_when(command(2, out), out / "checkpoints" / "step-000001" / "manifest.json", tmp_path / "log")
    assert f"step-{STEPS:06d}" not in checkpoints(out), "the kill came after the run had finished"
    rows, summary = run(2, out, extra=["--resume"])
    assert summary["steps_run"] >= 1 and [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert max_difference(final_weights(lora_runs["fsdp"][0], STEPS), final_weights(out, STEPS)) < WEIGHT_TOL


@pytest.mark.timeout(900)
@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)], ids=["fsdp2-then-plain1", "plain1-then-fsdp2"])
def test_checkpoint_resumes_across_world_sizes(lora_runs, tmp_path, first, then):
    out = tmp_path / "run"
    run(first, out, steps=1)
    rows, summary = run(then, out, extra=["--resume"])
    assert summary["world_size"] == then and summary["steps_run"] == STEPS - 1
    assert_same_game(lora_runs["one"][1], rows)
    assert max_difference(final_weights(lora_runs["one"][0], STEPS), final_weights(out, STEPS)) < WEIGHT_TOL
