"""One rank of a resume into DeepSpeed ZeRO, against plain AdamW, on a toy model (run by torch's launcher).

    DS_ACCELERATOR=cpu python -m torch.distributed.run --nproc_per_node 2 -m tests.zero_state_child STAGE FOLDER

Plain AdamW takes two steps on the full batch and its state after the first is written with
`optimizer_to_files`. A ZeRO-STAGE engine starts from the weights after the first step, takes that state
with `optimizer_from_files` before its first step, and takes the second step on its half of the batch.
Rank 0 writes to FOLDER/result.json how far the engine's weights and gathered AdamW state are from plain
AdamW's after the second step. The layer sizes (35, 7, 21, 3) are odd, so ZeRO-3's last partition is padded.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from ssp.training import checkpoint

STEPS_BEFORE_RESUME = 1


def loss_of(model, x, y):
    return ((model(x) - y) ** 2).mean()


def main(stage: int, folder: Path) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    x, y = torch.randn(8, 5), torch.randn(8, 3)

    plain = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(plain.parameters(), lr=1e-2, weight_decay=0.1)
    for step in (1, 2):
        optimizer.zero_grad()
        loss_of(plain, x, y).backward()
        optimizer.step()
        if step == STEPS_BEFORE_RESUME:
            first = copy.deepcopy(plain.state_dict())
            model.load_state_dict(first)
            if rank == 0:
                checkpoint.optimizer_to_files(optimizer, folder)
    dist.barrier()

    config = {"train_micro_batch_size_per_gpu": 8 // world, "zero_optimization": {"stage": stage}}
    ds_optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    engine, zero, _, _ = deepspeed.initialize(model=model, optimizer=ds_optimizer, config=config)
    state_before = len(checkpoint._optimizer_chain(zero)[-1].state)
    checkpoint.optimizer_from_files(zero, folder, engine.module)
    half = slice(rank * 8 // world, (rank + 1) * 8 // world)
    engine.backward(loss_of(engine, x[half], y[half]))
    engine.step()

    resumed = checkpoint.full_optimizer_state(zero, engine.module)["state"]
    expected = optimizer.state_dict()["state"]
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        weights = max((a - b).abs().max().item() for a, b in zip(engine.module.parameters(), plain.parameters()))
    result = {
        "optimizer_state_before_first_step": state_before,
        "weights": weights,
        "moved": max((first[k] - v).abs().max().item() for k, v in plain.state_dict().items()),
        "moments": max(
            (resumed[i][k] - expected[i][k]).abs().max().item() for i in expected for k in ("exp_avg", "exp_avg_sq")
        ),
        "steps": sorted({float(s["step"]) for s in resumed.values()}),
    }
    if rank == 0:
        (folder / "result.json").write_text(json.dumps(result))
    # Tear the process group down before exit: left to the interpreter's exit, a ZeRO-3 rank sometimes aborts
    # in the C++ destructor ("terminate called without an active exception") after its work was done.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
    # Work done, result written, process group destroyed: skip the interpreter's finalisation, where DeepSpeed's
    # CPU communication threads still abort a ZeRO-3 rank now and then (seen in a fresh-clone CI run even after
    # destroy_process_group). A failure in main() still raises before this line and exits non-zero.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
