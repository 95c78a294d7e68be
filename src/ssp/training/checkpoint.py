"""Atomic, pickle-free checkpoints: weights, optimizer, RNG, step, config and the experience pool.

A checkpoint is written into a temporary folder, every file is hashed into `manifest.json`, and the
folder is renamed into place. A folder without a manifest that verifies is never loaded.

Under FSDP the format on disk is the same: weights and optimizer state are gathered into full
tensors before rank 0 writes them (`full_model_state`, `full_optimizer_state`), and on resume the
weights go into the plain model before `accelerator.prepare` shards it, the optimizer state is
sharded like its parameters (`shard_optimizer_state`). Under DeepSpeed ZeRO the same full tensors are
gathered and scattered through DeepSpeed's tensor-fragment API. So a checkpoint written by N processes
resumes with M, sharded or not, with or without DeepSpeed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ssp import parallel
from ssp.fsutil import fsync_dir

CHECKPOINT_DIR = "checkpoints"
MANIFEST = "manifest.json"
_NAME = re.compile(r"^step-(\d{6,})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- optimizer state as safetensors + JSON -------------------------------------------------------
def optimizer_to_files(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    optimizer_state_to_files(optimizer.state_dict(), folder)


def optimizer_state_to_files(state: dict[str, Any], folder: Path) -> None:
    """An optimizer state dict (full tensors, keyed by parameter index) as safetensors + JSON."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, param_state in state["state"].items():
        for key, value in param_state.items():
            name = f"{idx}.{key}"
            if torch.is_tensor(value):
                tensors[name] = value.detach().cpu().contiguous()
            else:
                scalars[name] = value
    save_file(tensors, folder / "optimizer.safetensors")
    (folder / "optimizer.json").write_text(json.dumps({"param_groups": state["param_groups"], "scalars": scalars}))


def optimizer_from_files(optimizer: torch.optim.Optimizer, folder: Path, model=None) -> None:
    """`model`: the trained module, needed to recognise DeepSpeed's partitioned optimizer."""
    tensors = load_file(folder / "optimizer.safetensors")
    meta = json.loads((folder / "optimizer.json").read_text())
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    full = {"state": state, "param_groups": meta["param_groups"]}
    ds_params = _deepspeed_params(model) if model is not None else []
    if ds_params:
        _zero_load_full_state(optimizer, ds_params, full, folder)
    else:
        optimizer.load_state_dict(shard_optimizer_state(optimizer, full))


# -- sharded (FSDP2) models: gather on save, shard on load -------------------------------------------
def full_model_state(model) -> dict[str, torch.Tensor] | None:
    """The full state dict of a sharded model (FSDP2, DeepSpeed ZeRO-3), on the CPU (FSDP2: rank 0 only,
    other ranks {}); None when the model is not sharded. A collective: every rank calls it."""
    params = list(model.parameters())
    if any(parallel.is_zero3(p) for p in params):
        with parallel.zero3_gathered(params):  # one full copy, as for FSDP2's refresh
            state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    elif parallel.fsdp_units(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        return None
    # Tied parameters (lm_head = embeddings) come back as separate copies, which `save_pretrained` would then
    # write twice; keep the first name of each, as an unsharded save does.
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            state.pop(name, None)
        seen.add(id(p))
    return state


def _deepspeed_params(model) -> list[torch.Tensor]:
    """The trainable parameters (the optimizer's order) when DeepSpeed's ZeRO optimizer owns their state."""
    params = [p for p in model.parameters() if p.requires_grad]
    return params if any(hasattr(p, "ds_id") or hasattr(p, "_hp_mapping") for p in params) else []


def _optimizer_chain(optimizer) -> list:
    """accelerate's wrapper, DeepSpeed's ZeRO optimizer, the torch optimizer inside (it holds flat partitions)."""
    chain = [optimizer]
    while hasattr(chain[-1], "optimizer"):
        chain.append(chain[-1].optimizer)
    return chain


_ADAM_KEYS = ("exp_avg", "exp_avg_sq")  # AdamW's moments: what the trainer's optimizer keeps per parameter


def full_optimizer_state(optimizer: torch.optim.Optimizer, model=None) -> dict[str, Any] | None:
    """The optimizer's state dict with every sharded tensor gathered whole (FSDP2 DTensors; DeepSpeed ZeRO
    partitions through DeepSpeed's `safe_get_full_optimizer_state`); None when nothing is sharded. Same keys
    (parameter indices) and layout as an unsharded AdamW's. A collective."""
    ds_params = _deepspeed_params(model) if model is not None else []
    if ds_params:
        from deepspeed.utils import safe_get_full_optimizer_state

        base = _optimizer_chain(optimizer)[-1]
        steps = [float(s["step"]) for s in base.state.values() if "step" in s]
        group = {k: v for k, v in base.param_groups[0].items() if k != "params"}
        return {
            "state": {
                i: {
                    "step": torch.tensor(max(steps, default=0.0)),
                    **{k: safe_get_full_optimizer_state(p, k).cpu() for k in _ADAM_KEYS},
                }
                for i, p in enumerate(ds_params)
            },
            "param_groups": [{**group, "params": list(range(len(ds_params)))}],
        }
    state = optimizer.state_dict()
    if not any(hasattr(v, "full_tensor") for s in state["state"].values() for v in s.values()):
        return None
    return {
        "state": {
            idx: {k: parallel.full_tensor(v).cpu() if torch.is_tensor(v) else v for k, v in s.items()}
            for idx, s in state["state"].items()
        },
        "param_groups": state["param_groups"],
    }


def _zero_load_full_state(optimizer, params: list[torch.Tensor], state: dict[str, Any], folder: Path) -> None:
    """Full AdamW state (the layout `full_optimizer_state` writes) into DeepSpeed ZeRO's partitions, stage 1, 2
    or 3, through DeepSpeed's tensor-fragment API (`safe_set_full_optimizer_state`, each rank keeps its part; ZeRO-3:
    `safe_set_local_optimizer_state`).

    DeepSpeed's torch optimizer creates its state at the first step and only then links each parameter's
    fragment to it, so on resume (before any step) the state of every flat fp32 partition is created here, as
    DeepSpeed's own universal-checkpoint loader does, and linked the way DeepSpeed links it after a step."""
    from deepspeed.utils import safe_set_full_optimizer_state, safe_set_local_optimizer_state

    chain = _optimizer_chain(optimizer)
    base = chain[-1]
    zero = next((o for o in chain if hasattr(o, "initialize_optimizer_states")), None)
    # The flat fp32 partitions (ZeRO-3's name, then ZeRO-1/2's) that the torch optimizer's state is keyed by.
    flats = getattr(zero, "fp32_partitioned_groups_flat", None) or getattr(zero, "single_partition_of_fp32_groups", 0)
    if not flats:
        raise ValueError(
            f"{folder}: cannot restore the optimizer into {' > '.join(type(o).__name__ for o in chain)} (checked: "
            "DeepSpeed 0.19's ZeRO-1/2/3 optimizers, not its BF16_Optimizer); resume without DeepSpeed"
        )
    saved_params = state["param_groups"][0]["params"] if len(state["param_groups"]) == 1 else None
    if saved_params is None or len(saved_params) != len(params):
        raise ValueError(
            f"{folder / 'optimizer.json'}: optimizer state for "
            f"{sum(len(g['params']) for g in state['param_groups'])} parameters in {len(state['param_groups'])} "
            f"group(s); this model trains {len(params)} in one"
        )
    steps = [float(s["step"]) for s in state["state"].values() if "step" in s]
    for flat in flats:
        base.state[flat] = {"step": torch.tensor(max(steps, default=0.0))} | {
            k: torch.zeros_like(flat) for k in _ADAM_KEYS
        }
    if zero is not None and hasattr(zero, "_lazy_init_hp_params_optimizer_state"):  # ZeRO-1/2: link the fragments
        zero._lazy_init_hp_params_optimizer_state()
    for group in base.param_groups:  # the saved hyperparameters, as `load_state_dict` restores them
        group.update({k: v for k, v in state["param_groups"][0].items() if k != "params" and k in group})
    for idx, p in enumerate(params):
        for key in _ADAM_KEYS:
            value = state["state"].get(idx, {}).get(key)
            if value is None:  # a parameter that had no gradient yet: its moments stay zero, as in torch's AdamW
                continue
            numel = getattr(p, "ds_numel", p.numel())  # ZeRO-3 parameters are empty outside a gather
            if value.numel() != numel:
                raise ValueError(f"{folder}: optimizer state {idx}.{key} has {value.numel()} values, not {numel}")
            if hasattr(p, "ds_id"):  # ZeRO-3: this rank's slice, by hand (see `_zero3_local_slice`)
                safe_set_local_optimizer_state(p, _zero3_local_slice(p, value), key)
            else:
                safe_set_full_optimizer_state(p, value.to(torch.float32), key)


def _zero3_local_slice(param, full: torch.Tensor) -> torch.Tensor:
    """This rank's partition of a full ZeRO-3 tensor, zero-padded like DeepSpeed's own partitions.

    DeepSpeed 0.19's `safe_set_full_optimizer_state` cuts the last rank's part without that padding, so it fails
    for a parameter whose size is not a multiple of the world size (found on CPU: 35 values over 2 ranks)."""
    n = param.ds_tensor.numel()
    rank = torch.distributed.get_rank(getattr(param, "ds_process_group", None))
    part = full.flatten()[rank * n : (rank + 1) * n]
    return torch.cat([part.to(torch.float32), part.new_zeros(n - part.numel(), dtype=torch.float32)])


def shard_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
    """Full optimizer tensors cut like their (FSDP2-sharded) parameters; unchanged for plain parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not any(hasattr(p, "device_mesh") for p in params):
        return state
    from torch.distributed.tensor import distribute_tensor

    sharded: dict[int, dict[str, Any]] = {}
    for idx, s in state["state"].items():
        p = params[int(idx)]
        sharded[idx] = {
            k: distribute_tensor(v, p.device_mesh, p.placements)
            if torch.is_tensor(v) and hasattr(p, "device_mesh") and v.shape == p.shape
            else v
            for k, v in s.items()
        }
    return {"state": sharded, "param_groups": state["param_groups"]}


# -- RNG ----------------------------------------------------------------------------------------
def rng_to_files(game_rng: random.Random, folder: Path, rank: int = 0) -> None:
    """The torch RNG of one rank (sampling differs per rank) and the game RNG (the same on all ranks)."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    save_file(tensors, folder / f"rng-rank{rank}.safetensors")
    if rank == 0:
        version, internal, gauss = game_rng.getstate()
        (folder / "rng.json").write_text(json.dumps({"game": [version, list(internal), gauss]}))


def rng_from_files(game_rng: random.Random, folder: Path, rank: int = 0) -> None:
    path = folder / f"rng-rank{rank}.safetensors"
    if not path.is_file():  # resumed with more processes than saved: fall back to rank 0's stream
        path = folder / "rng-rank0.safetensors"
    tensors = load_file(path)
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = json.loads((folder / "rng.json").read_text())["game"]
    game_rng.setstate((version, tuple(internal), gauss))


# -- whole checkpoint ---------------------------------------------------------------------------
def save_checkpoint(
    run_dir: Path,
    step: int,
    model,
    optimizer,
    game_rng: random.Random,
    pool,
    config_yaml: str,
    extra: dict[str, Any],
    rank: int = 0,
    world: int = 1,
    barrier=lambda: None,
) -> Path:
    """Every rank calls this (with `barrier` = a cross-rank barrier); rank 0 writes all but the other ranks' RNG."""
    root = run_dir / CHECKPOINT_DIR
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{checkpoint_name(step)}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    rng_to_files(game_rng, tmp, rank)
    weights, optimizer_state = full_model_state(model), full_optimizer_state(optimizer, model)  # collectives if sharded
    barrier()
    if rank != 0:
        barrier()
        return final
    model.save_pretrained(tmp / "weights", safe_serialization=True, **({"state_dict": weights} if weights else {}))
    if optimizer_state is None:
        optimizer_to_files(optimizer, tmp)
    else:  # gathered from shards above
        optimizer_state_to_files(optimizer_state, tmp)
    pool.snapshot(tmp / "pool.sqlite")
    (tmp / "config.yaml").write_text(config_yaml, encoding="utf-8")
    (tmp / "state.json").write_text(json.dumps({"step": step, **extra}, indent=2))
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    manifest = {"step": step, "files": {str(p.relative_to(tmp)): _sha256(p) for p in files}}
    for p in files:
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    with open(tmp / MANIFEST, "rb") as f:
        os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    barrier()
    return final


def verify_checkpoint(folder: Path) -> bool:
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        return all(
            (folder / name).is_file() and _sha256(folder / name) == digest for name, digest in manifest["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint whose manifest verifies; partial or corrupt ones are skipped."""
    root = run_dir / CHECKPOINT_DIR
    if not root.is_dir():
        return None
    candidates = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and p.is_dir())
    for _step, folder in reversed(candidates):
        if verify_checkpoint(folder):
            return folder
    return None


def find_checkpoint(path: Path) -> Path:
    """`path` itself when it is a complete checkpoint, else the latest complete checkpoint of the run folder `path`."""
    if verify_checkpoint(path):
        return path
    latest = latest_checkpoint(path) if path.is_dir() else None
    if latest is None:
        raise ValueError(f"{path}: neither a complete checkpoint nor a run folder holding one")
    return latest


def load_weights(model, folder: Path) -> None:
    """Weights saved by `save_checkpoint` (a peft adapter or a full model), loaded from safetensors."""
    weights = folder / "weights"
    if (weights / "adapter_model.safetensors").is_file():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(weights / "adapter_model.safetensors"))
    else:
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(weights.glob("*.safetensors")):
            state.update(load_file(shard))
        missing, unexpected = model.load_state_dict(state, strict=False)
        real_missing = [k for k in missing if not k.endswith("lm_head.weight")]  # tied to the embeddings
        if real_missing or unexpected:
            raise ValueError(
                f"{weights}: checkpoint does not match the model (missing {real_missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
