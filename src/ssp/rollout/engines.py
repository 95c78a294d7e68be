"""Choosing a rollout engine by name (`rollout.backend`).

`auto` (the default) takes ssp's own decoder (`native`: bf16 weights, static KV cache) on CPU for the
model families it supports and transformers' `generate` (`hf`) otherwise; `vllm` is imported only when
chosen. Every engine has the same interface (rollout/base.py).
"""

from __future__ import annotations

from ssp.rollout.hf import HFRolloutEngine
from ssp.rollout.native import NativeRolloutEngine, supports


def resolve_backend(backend: str, model) -> str:
    """The concrete backend `auto` stands for with this model on its device."""
    if backend != "auto":
        return backend
    device = next(model.parameters()).device
    return "native" if device.type == "cpu" and supports(model) is None else "hf"


def build_rollout_engine(
    backend: str,
    model,
    tokenizer,
    max_prompt_tokens: int,
    batch_size: int,
    *,
    dtype: str = "bfloat16",
    rollout=None,
    model_config=None,
    seed: int = 0,
):
    """The rollout engine for `rollout.backend`. `dtype` is the native engine's weight copy (`rollout.dtype`);
    the vLLM backend also needs the run's `rollout` and `model_config` sections and the run seed."""
    backend = resolve_backend(backend, model)
    if backend == "native":
        return NativeRolloutEngine(model, tokenizer, max_prompt_tokens, batch_size, dtype=dtype)
    if backend == "hf":
        return HFRolloutEngine(model, tokenizer, max_prompt_tokens, batch_size)
    if backend == "vllm":
        from ssp.rollout.vllm import build_vllm_engine  # optional extra: imported only when chosen

        return build_vllm_engine(model, tokenizer, max_prompt_tokens, rollout, model_config, seed=seed)
    raise ValueError(f"rollout.backend: unknown backend {backend!r}")


def engine_for_run(cfg, model, tokenizer):
    """The rollout engine a run's config (`SSPConfig`) asks for: `ssp train` and `ssp warmstart` build it alike."""
    return build_rollout_engine(
        cfg.rollout.backend,
        model,
        tokenizer,
        cfg.model.max_prompt_tokens,
        cfg.rollout.batch_size,
        dtype=cfg.rollout.dtype,
        rollout=cfg.rollout,
        model_config=cfg.model,
        seed=cfg.run.seed,
    )
