"""DeepSpeed ZeRO-2 and ZeRO-3 under accelerate on two CPU processes (DeepSpeed's CPU accelerator, gloo).

Not in default CI: DeepSpeed is not a dev dependency (`pip install -e '.[deepspeed]'`); the tests skip
without it. The presets are `configs/accelerate/deepspeed_zero{2,3}.yaml` with CPU variants of their
JSON (fp32 instead of bf16, so a run can be compared with a plain fp32 process). Micro-batches of 2
make every update accumulate several backwards before DeepSpeed's single optimizer step. ZeRO-2 with
LoRA; ZeRO-3 with full fine-tuning and the KL reference (rollouts from the partitioned policy).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import REPO
from tests.launch import (
    LOSS_TOL,
    WEIGHT_TOL,
    accelerate,
    environment,
    final_weights,
    max_difference,
    preset,
    run_to_end,
    sets,
    train_command,
)

pytest.importorskip("deepspeed")

STEPS = 2
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


@pytest.mark.timeout(900)
@pytest.mark.parametrize("stage,extra", [(2, []), (3, FULL)], ids=["zero2-lora", "zero3-full"])
def test_zero_matches_one_process_and_its_checkpoint_resumes_without_deepspeed(tmp_path, stage, extra):
    one_rows, _ = run(1, tmp_path / "one", STEPS, extra)
    ds_rows, ds = run(2, tmp_path / "zero", STEPS, extra, stage)
    assert ds["distributed_type"] == "DEEPSPEED" and ds["world_size"] == 2
    for a, b in zip(one_rows, ds_rows, strict=True):
        for key in ("reward/attacker", "reward/defender", "pool/size", "update_tokens"):
            assert a[key] == b[key], (key, a["step"])
        assert a["loss"] == pytest.approx(b["loss"], **LOSS_TOL)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], **LOSS_TOL)
    one_w = final_weights(tmp_path / "one", STEPS)
    assert max_difference(one_w, final_weights(tmp_path / "zero", STEPS)) < WEIGHT_TOL
    # The optimizer state was gathered into the plain AdamW layout: one plain process resumes it exactly.
    out = tmp_path / "resumed"
    run(2, out, 1, extra, stage)
    rows, summary = run(1, out, STEPS, [*extra, "--resume"])
    assert summary["steps_run"] == STEPS - 1 and [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert max_difference(one_w, final_weights(out, STEPS)) < WEIGHT_TOL
