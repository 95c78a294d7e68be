"""DeepSpeed ZeRO-2 and ZeRO-3 under accelerate on two CPU processes (DeepSpeed's CPU accelerator, gloo).

Not in default CI: DeepSpeed is not a dev dependency (`pip install -e '.[deepspeed]'`); the tests skip
without it. The presets are `configs/accelerate/deepspeed_zero{2,3}.yaml` with CPU variants of their
JSON (fp32 instead of bf16, so a run can be compared with a plain fp32 process). Micro-batches of 2
make every update accumulate several backwards before DeepSpeed's single optimizer step. ZeRO-2 with
LoRA; ZeRO-3 with full fine-tuning and the KL reference (rollouts from the partitioned policy).
Checkpoints hold the full AdamW state either way: a DeepSpeed checkpoint resumes in a plain process, and
a run killed under DeepSpeed resumes under DeepSpeed with its moments and step counter, not restarted ones.
On a toy model (tests/zero_state_child.py) AdamW state goes into ZeRO-1/2/3 and the next step equals plain AdamW's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import REPO
from tests.launch import (
    LOSS_TOL,
    WEIGHT_TOL,
    accelerate,
    checkpoints,
    environment,
    final_weights,
    free_port,
    kill_when,
    max_difference,
    preset,
    run_ok,
    run_to_end,
    sets,
    train_command,
)

pytest.importorskip("deepspeed")

STEPS = 2
# A resumed run takes the same code path as the uninterrupted one: only float noise may differ (measured: none).
# A step moves the weights by about the learning rate (1e-4 to 2e-4 here).
RESUME_TOL = 1e-6
FULL = sets("model.finetune=full", "rl.kl_coef=0.05", "rl.learning_rate=1e-4")


def cpu_json(stage: int) -> dict:
    """`configs/accelerate/ds_zero{stage}.json` without its bf16 block (CPU runs compare against fp32)."""
    config = json.loads((REPO / "configs" / "accelerate" / f"ds_zero{stage}.json").read_text())
    config.pop("bf16")
    return config


def command(processes: int, out: Path, steps: int, extra=(), stage: int = 2) -> list[str]:
    """One process: a plain run. Two: `accelerate launch` with the ZeRO preset and its JSON minus bf16."""
    launcher = None
    if processes > 1:
        config = out.parent / f"ds_zero{stage}_cpu.json"
        config.write_text(json.dumps(cpu_json(stage)))
        zero = preset(f"deepspeed_zero{stage}.yaml")
        launcher = accelerate(processes, "--config_file", zero, "--deepspeed_config_file", str(config))
    args = sets("run.checkpoint_every=1", "rl.micro_batch_size=2", f"run.max_steps={steps}")
    return train_command(out, *args, *extra, launcher=launcher)


def run(processes: int, out: Path, steps: int, extra=(), stage: int = 2):
    return run_to_end(command(processes, out, steps, extra, stage), out, environment(DS_ACCELERATOR="cpu"))


def optimizer_state(out: Path, step: int) -> dict[str, torch.Tensor]:
    """The AdamW state saved at `step`: `{index}.exp_avg`, `{index}.exp_avg_sq`, `{index}.step`."""
    return load_file(out / "checkpoints" / f"step-{step:06d}" / "optimizer.safetensors")


@pytest.fixture(scope="module", params=[(2, []), (3, FULL)], ids=["zero2-lora", "zero3-full"])
def zero_runs(request, tmp_path_factory):
    """A plain process and 2 ZeRO processes, uninterrupted, for each stage."""
    stage, extra = request.param
    root = tmp_path_factory.mktemp(f"zero{stage}")
    one, zero = root / "one", root / "zero"
    return {
        "stage": stage,
        "extra": extra,
        "one": (one, *run(1, one, STEPS, extra)),
        "zero": (zero, *run(2, zero, STEPS, extra, stage)),
    }


@pytest.mark.timeout(900)
def test_zero_matches_one_process(zero_runs):
    one_dir, one_rows, _ = zero_runs["one"]
    zero_dir, ds_rows, ds = zero_runs["zero"]
    assert ds["distributed_type"] == "DEEPSPEED" and ds["world_size"] == 2
    for a, b in zip(one_rows, ds_rows, strict=True):
        for key in ("reward/attacker", "reward/defender", "pool/size", "update_tokens"):
            assert a[key] == b[key], (key, a["step"])
        assert a["loss"] == pytest.approx(b["loss"], **LOSS_TOL)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], **LOSS_TOL)
    assert max_difference(final_weights(one_dir, STEPS), final_weights(zero_dir, STEPS)) < WEIGHT_TOL


@pytest.mark.timeout(900)
def test_zero_checkpoint_resumes_without_deepspeed(zero_runs, tmp_path):
    # The optimizer state was gathered into the plain AdamW layout: one plain process resumes it exactly.
    stage, extra = zero_runs["stage"], zero_runs["extra"]
    out = tmp_path / "resumed"
    run(2, out, 1, extra, stage)
    rows, summary = run(1, out, STEPS, [*extra, "--resume"])
    assert summary["steps_run"] == STEPS - 1 and [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert max_difference(final_weights(zero_runs["one"][0], STEPS), final_weights(out, STEPS)) < WEIGHT_TOL


@pytest.mark.timeout(900)
def test_zero_run_killed_resumes_under_deepspeed_with_its_moments(zero_runs, tmp_path):
    stage, extra = zero_runs["stage"], zero_runs["extra"]
    out = tmp_path / "killed"
    kill_when(
        command(2, out, STEPS, extra, stage),
        out / "checkpoints" / "step-000001" / "manifest.json",
        tmp_path / "log",
        environment(DS_ACCELERATOR="cpu"),
    )
    assert f"step-{STEPS:06d}" not in checkpoints(out), "the kill came after the run had finished"
    rows, summary = run(2, out, STEPS, [*extra, "--resume"], stage)
    assert summary["distributed_type"] == "DEEPSPEED" and summary["steps_run"] == STEPS - 1
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    zero_dir = zero_runs["zero"][0]
    last = final_weights(zero_dir, STEPS)
    assert max_difference(final_weights(zero_dir, 1), last) > 50 * RESUME_TOL  # step 2 moved the weights
    assert max_difference(last, final_weights(out, STEPS)) < RESUME_TOL
    # ...because the AdamW state went on as it was (measured: bit-equal on CPU); moments restarted at the
    # resume would count 1 step, not 2, and differ.
    resumed, uninterrupted = optimizer_state(out, STEPS), optimizer_state(zero_dir, STEPS)
    steps = {float(v) for k, v in resumed.items() if k.endswith(".step")}
    assert steps == {float(STEPS)}
    torch.testing.assert_close(resumed, uninterrupted, rtol=1e-4, atol=1e-12)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_adamw_state_goes_into_every_zero_stage_before_its_first_step(tmp_path, stage):
    """A toy model with odd layer sizes (ZeRO-3 pads its last partition): see tests/zero_state_child.py."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    child = ["--master_port", str(free_port()), "-m", "tests.zero_state_child", str(stage), str(tmp_path)]
    run_ok([*torchrun, *child], environment(DS_ACCELERATOR="cpu"))
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["optimizer_state_before_first_step"] == 0  # DeepSpeed creates it lazily: there was none to fill
    assert result["moved"] > 1e-3  # the second step matters: Adam moves each weight by about lr = 1e-2
    assert result["weights"] < 1e-6 and result["moments"] < 1e-6, result
    assert result["steps"] == [2.0]
