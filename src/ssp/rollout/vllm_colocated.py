"""The colocated vLLM engine: an in-process `vllm.LLM` per training rank, refreshed with the policy's weights.

After every update each rank streams `(name, tensor)` pairs into its engine's model through the
model's own `load_weights` (`push_weights`): every trainable parameter under full fine-tuning, the
merged `W + ΔW` of each LoRA-wrapped module under LoRA (`ssp.rollout.weights`). The prefix
cache is reset afterwards, so no KV block computed with the old weights is reused.

We merge rather than use vLLM's LoRA requests because (1) generation then runs the plain dense
kernels at full speed, with no punica/LoRA kernel overhead and no `max_lora_rank` or
supported-target-module limits, (2) no adapter file is written or read per step, and (3) full
fine-tuning and LoRA share one path. The price is re-sending the LoRA-targeted matrices each step
(a GPU-local copy, ~ the size of those matrices) instead of the small adapter.

Why `apply_model` + `load_weights` rather than vLLM 0.33's official weight-update routes (read in its
source, not run: no GPU here): `start_weight_update` / `update_weights` / `finish_weight_update`
need `weight_transfer_config` and a trainer-side transfer engine, and carry tensors between
processes (NCCL groups or CUDA-IPC handles); `collective_rpc("reload_weights", ...)` reloads layer by
layer, expecting every weight of each layer it touches, while a LoRA refresh sends only the changed
matrices. Our engine shares the trainer's process and GPU, where the model's `load_weights` is a
GPU-local copy with no transport at all. This needs vLLM's engine core in this process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`, set by `import_vllm`; a user-set 1 is refused with a reason).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from typing import Any

import torch

from ssp import parallel
from ssp.config import ModelConfig, SamplingConfig, VLLMRolloutConfig
from ssp.rollout.base import ChatRequest, Completion
from ssp.rollout.chat import ChatEncoder, eos_token_ids
from ssp.rollout.vllm_requests import build_completion, copies_of, sampling_params
from ssp.rollout.weights import export_weights, materialize_model

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "rollout.backend=vllm with rollout.vllm.mode=colocated needs vLLM in this environment: "
    "pip install 'ssp[vllm]' (Linux with an NVIDIA GPU). Server mode only needs a reachable "
    "`vllm serve` (see docs/gpu.md)."
)
MULTIPROCESSING_VAR = "VLLM_ENABLE_V1_MULTIPROCESSING"


def check_in_process_engine() -> None:
    """Keep vLLM's engine core in this process (weights are pushed into its model object directly).

    vLLM (V1) runs the engine core in a child process unless `VLLM_ENABLE_V1_MULTIPROCESSING=0`; there
    `apply_model` would ship a pickled copy of our push to the child, which cannot reach the trainer's
    tensors, and the engine would keep generating with its start-up weights. A user-set value other
    than 0 is refused rather than overridden behind the user's back.
    """
    value = os.environ.setdefault(MULTIPROCESSING_VAR, "0")
    if value.strip() != "0":
        raise ValueError(
            f"{MULTIPROCESSING_VAR}={value} is set, but rollout.vllm.mode=colocated pushes the "
            "policy's weights into the engine's model in this process, which needs vLLM's engine "
            f"core in-process: unset it or set {MULTIPROCESSING_VAR}=0 (or use rollout.vllm.mode=server)"
        )


def import_vllm():
    """The `vllm` module, imported lazily; a clear error when the extra is not installed."""
    check_in_process_engine()
    try:
        import vllm
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from e
    return vllm


def _load_into(vllm_model, weights: Iterable[tuple[str, torch.Tensor]]) -> int:
    """Push weights through vLLM's `load_weights`; returns how many tensors went in."""
    count = 0

    def counted():
        nonlocal count
        for item in weights:
            count += 1
            yield item

    try:
        vllm_model.load_weights(counted())
    except (KeyError, ValueError) as e:
        raise RuntimeError(
            f"vLLM's {type(vllm_model).__name__}.load_weights rejected an exported weight ({e}); "
            "the policy's parameter names do not match the architecture vLLM loaded"
        ) from e
    return count


def push_weights(llm, weights: Iterable[tuple[str, torch.Tensor]]) -> int:
    """Load `weights` into the model inside a (same-process) `vllm.LLM`, then drop stale prefix-cache blocks.

    `LLM.apply_model` runs the function on the worker's model, in this process (the engine core is kept
    in-process, see `check_in_process_engine`), so the tensors are copied GPU-locally by each
    parameter's own `weight_loader` (which fuses q/k/v and gate/up).
    """
    counts = llm.apply_model(lambda m: _load_into(m, weights))
    llm.reset_prefix_cache()
    return counts[0] if counts else 0


class VLLMColocatedEngine:
    """An in-process `vllm.LLM` per rank (or per tensor-parallel group of ranks) on the training GPU."""

    def __init__(
        self,
        model,
        tokenizer,
        max_prompt_tokens: int,
        options: VLLMRolloutConfig,
        model_config: ModelConfig,
        max_model_len: int,
        seed: int = 0,
        llm=None,
    ):
        check_in_process_engine()
        self.model = model
        self.tokenizer = tokenizer
        self.encoder = ChatEncoder(tokenizer, max_prompt_tokens)
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.options = options
        self.rank, self.world = parallel.rank_world()
        tp = options.tensor_parallel_size
        if tp > 1 and (self.world % tp or self.world < tp):
            raise ValueError(
                f"rollout.vllm.tensor_parallel_size={tp} in colocated mode needs a multiple of {tp} "
                f"training processes (each rank holds one shard); got {self.world}. "
                "Use server mode for a tensor-parallel engine on separate GPUs."
            )
        self.tp_group = None
        if tp > 1:
            dist = parallel.dist()
            self.tp_group, _ = dist.new_subgroups_by_enumeration(
                [list(range(s, s + tp)) for s in range(0, self.world, tp)]
            )
        self._tmp: str | None = None
        self.llm = llm if llm is not None else self._build(model_config, max_model_len, seed)
        # The first generate pushes the weights: by then a resumed run has loaded its checkpoint.
        self._stale = True

    def _build(self, model_config: ModelConfig, max_model_len: int, seed: int):
        vllm = import_vllm()
        o = self.options
        if model_config.name_or_path == "tiny":  # exists only in memory: write it out for vLLM
            self._tmp = tempfile.mkdtemp(prefix="ssp-vllm-model-")
            source, revision = str(materialize_model(self.model, self.tokenizer, self._tmp)), None
        else:
            from ssp.models.loader import resolve_model_source

            source, revision = resolve_model_source(model_config.name_or_path), model_config.revision
        kwargs: dict[str, Any] = dict(
            model=source,
            revision=revision,
            dtype=model_config.dtype,
            trust_remote_code=model_config.trust_remote_code,
            gpu_memory_utilization=o.gpu_memory_utilization,
            tensor_parallel_size=o.tensor_parallel_size,
            max_model_len=max_model_len,
            enable_prefix_caching=o.enable_prefix_caching,
            enforce_eager=o.enforce_eager,
            # same seed inside a tensor-parallel group (its ranks must sample alike), different across groups
            seed=seed + self.rank // o.tensor_parallel_size,
        )
        if self.world > 1:
            # One engine per rank (or TP group) inside the torchrun/accelerate processes.
            kwargs["distributed_executor_backend"] = "external_launcher"
        kwargs.update(o.engine_kwargs)
        log.info("building colocated vLLM engine: %s", {k: v for k, v in kwargs.items() if k != "model"})
        return vllm.LLM(**kwargs)

    def refresh_weights(self) -> None:
        t0 = time.perf_counter()
        count = push_weights(self.llm, export_weights(self.model, only_changed=True))
        self._stale = False
        log.debug("vLLM weight refresh: %d tensors in %.2fs", count, time.perf_counter() - t0)

    def generate(self, requests: list[ChatRequest], sampling: SamplingConfig, n: int = 1) -> list[list[Completion]]:
        if self._stale:  # every rank calls generate (ShardedEngine), so collectives inside are safe
            self.refresh_weights()
        encoded = [self.encoder.encode(r) for r in requests]
        parts: list = [encoded]
        if self.tp_group is not None:  # the ranks of a TP group drive one engine: they submit the same batch
            dist = parallel.dist()
            parts = [None] * self.options.tensor_parallel_size
            dist.all_gather_object(parts, encoded, group=self.tp_group)
        everything = [e for part in parts for e in part]
        if not everything:
            return []
        vllm = import_vllm()
        params = vllm.SamplingParams(**sampling_params(sampling, n, self.eos_ids))
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids, _ in everything], params, use_tqdm=False)
        results = []
        for (ids, truncated), out in zip(everything, outputs, strict=True):
            comps = [
                build_completion(
                    o.token_ids,
                    o.finish_reason,
                    getattr(o, "stop_reason", None),
                    ids,
                    self.tokenizer,
                    self.eos_ids,
                    truncated,
                )
                for o in sorted(out.outputs, key=lambda o: o.index)
            ]
            results.append(copies_of(comps[0], n) if len(comps) == 1 and n > 1 else comps)
        if self.tp_group is not None:
            start = sum(len(p) for p in parts[: dist.get_rank(self.tp_group)])
            results = results[start : start + len(encoded)]
        return results

    def close(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
