"""Choosing a rollout engine by name (`rollout.backend`): HF `generate` here, vLLM only when chosen."""

from __future__ import annotations

from ssp.rollout.hf import HFRolloutEngine


def build_rollout_engine(backend: str, model, tokenizer, max_prompt_tokens: int, batch_size: int, *,
                         rollout=None, model_config=None, seed: int = 0):
    """The rollout engine for `rollout.backend`. The vLLM backend also needs the run's `rollout` and
    `model_config` sections (its options, the model source, LoRA or full) and the run seed."""
    if backend == "hf":
        return HFRolloutEngine(model, tokenizer, max_prompt_tokens, batch_size)
    if backend == "vllm":
        from ssp.rollout.vllm import build_vllm_engine  # optional extra: imported only when chosen

        return build_vllm_engine(model, tokenizer, max_prompt_tokens, rollout, model_config, seed=seed)
    raise ValueError(f"rollout.backend: unknown backend {backend!r}")
