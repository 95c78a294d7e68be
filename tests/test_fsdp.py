"""FSDP (accelerate's FSDP2 preset, `configs/accelerate/fsdp.yaml`) on two CPU processes (gloo).

Greedy rollouts make a step's global batch independent of how it is split, so a 2-process FSDP run
must play the same game as one plain process (same rewards, same pool) and, with gradients
reduce-scattered instead of summed in one place, end within float-summation noise of the same
weights. Checkpoints are the same consolidated safetensors either way: a run killed under FSDP
resumes to the uninterrupted run's weights, and a checkpoint crosses world sizes in both directions.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import REPO

STEPS = 3
ARGS = [
    "train",
    "-c",
    str(REPO / "configs" / "tiny.yaml"),
    "--quiet",
    "--set",
    "run.checkpoint_every=1",
    "--set",
    "rollout.attacker.temperature=0",
    "--set",
    "rollout.defender.temperature=0",
    "--set",
    "run.threads=1",
]
# Equal up to float summation order (the loss of a 2-rank run is a sum of two partial sums).
LOSS_TOL = dict(rel=1e-3, abs=1e-5)
WEIGHT_TOL = 1e-4


def _port() -> int:
    return 29700 + os.getpid() % 200


def _command(processes: int, out: Path, steps: int, extra=(), preset: str = "fsdp.yaml") -> list[str]:
    """One process: a plain run. Two: `accelerate launch` with the repository's preset, verbatim."""
    launcher = (
        [
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(REPO / "configs" / "accelerate" / preset),
            "--num_processes",
            str(processes),
            "--main_process_port",
            str(_port()),
        ]
        if processes > 1
        else []
    )
    return [sys.executable, *launcher, "-m", "ssp", *ARGS, "--set", f"run.max_steps={steps}", "-o", str(out), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(processes: int, out: Path, steps: int = STEPS, extra=()):
    res = subprocess.run(
        _command(processes, out, steps, extra), capture_output=True, text=True, env=_env(), timeout=600, cwd=REPO
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "summary.json").read_text())


def final_weights(out: Path, step: int = STEPS) -> dict[str, torch.Tensor]:
    folder = out / "checkpoints" / f"step-{step:06d}" / "weights"
    weights: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(f))
    assert weights, folder
    return weights


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    assert all(a[k].shape == b[k].shape for k in a)  # full (consolidated) tensors, not shards
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


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
    assert max_difference(final_weights(one_dir), final_weights(out)) < WEIGHT_TOL
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
    one_w, two_w = final_weights(tmp_path / "one"), final_weights(tmp_path / "fsdp")
    assert "model.embed_tokens.weight" in two_w  # a full model, not an adapter
    assert max_difference(one_w, two_w) < WEIGHT_TOL


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not path.is_file():
        assert proc.poll() is None, f"the run ended before {path} was written"
        assert time.monotonic() < end, f"no {path} after {timeout}s"
        time.sleep(0.1)


def _descendants(pid: int) -> list[int]:
    """Child processes, recursively (torch's launcher starts its workers in sessions of their own)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *_descendants(child)]
    return found


@pytest.mark.timeout(900)
def test_fsdp_run_killed_resumes_to_the_uninterrupted_weights(lora_runs, tmp_path):
    out = tmp_path / "killed"
    with open(tmp_path / "log", "wb") as log:
        proc = subprocess.Popen(_command(2, out, STEPS), cwd=REPO, env=_env(), stdout=log, stderr=log)
        try:
            _wait_for(out / "checkpoints" / "step-000001" / "manifest.json", proc)
        finally:
            for pid in [proc.pid, *_descendants(proc.pid)]:  # the launcher and both workers, mid-run
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
    done = sorted(p.name for p in (out / "checkpoints").glob("step-*"))
    assert f"step-{STEPS:06d}" not in done, "the kill came after the run had finished"
    rows, summary = run(2, out, extra=["--resume"])
    assert summary["steps_run"] >= 1 and [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert max_difference(final_weights(lora_runs["fsdp"][0]), final_weights(out)) < WEIGHT_TOL


@pytest.mark.timeout(900)
@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)], ids=["fsdp2-then-plain1", "plain1-then-fsdp2"])
def test_checkpoint_resumes_across_world_sizes(lora_runs, tmp_path, first, then):
    out = tmp_path / "run"
    run(first, out, steps=1)
    rows, summary = run(then, out, extra=["--resume"])
    assert summary["world_size"] == then and summary["steps_run"] == STEPS - 1
    assert_same_game(lora_runs["one"][1], rows)
    assert max_difference(final_weights(lora_runs["one"][0]), final_weights(out)) < WEIGHT_TOL
