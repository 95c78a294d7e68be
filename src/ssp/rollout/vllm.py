"""vLLM rollouts (optional extra `ssp[vllm]`, checked against vLLM 0.33): which engine, built from the config.

Two modes (`rollout.vllm.mode`): a colocated in-process engine per training rank
(`ssp.rollout.vllm_colocated`) or a separately started `vllm serve` (`ssp.rollout.vllm_server`).
Both render prompts with our own `ChatEncoder` and send vLLM the prompt TOKEN IDS, so the prompt
the policy is trained on is byte-for-byte the prompt the engine continued, exactly as with the HF
backend; both read back the sampled token ids and sample with the same parameters
(`ssp.rollout.vllm_requests`). The policy's weights reach the engine as merged tensors (colocated)
or as a peft adapter (server), built in `ssp.rollout.weights`. In both modes the first push
happens lazily, on the first `generate`: by then a resumed run has loaded its checkpoint.

What can run without a GPU is tested in tests/test_scaleout.py: the weight export against peft's
`merge_and_unload`, the request bodies and `SamplingParams` arguments, the completions, the colocated
refresh against a stand-in `vllm` module, and the whole server mode against a local HTTP server that
serves the tiny model through the HF backend.
"""

from __future__ import annotations

from ssp.config import ModelConfig, RolloutConfig
from ssp.rollout.vllm_colocated import VLLMColocatedEngine
from ssp.rollout.vllm_server import VLLMServerEngine


def default_max_model_len(max_prompt_tokens: int, rollout: RolloutConfig) -> int:
    return max_prompt_tokens + max(rollout.attacker.max_new_tokens, rollout.defender.max_new_tokens)


def build_vllm_engine(
    model,
    tokenizer,
    max_prompt_tokens: int,
    rollout: RolloutConfig | None,
    model_config: ModelConfig | None,
    seed: int = 0,
):
    if rollout is None or model_config is None:
        raise ValueError(
            "rollout.backend=vllm needs the run's configs: call build_rollout_engine(..., "
            "rollout=cfg.rollout, model_config=cfg.model, seed=cfg.run.seed)"
        )
    o = rollout.vllm
    if o.mode == "server":
        if model_config.finetune != "lora":
            raise ValueError(
                "rollout.vllm.mode=server refreshes the policy as a LoRA adapter; with "
                "model.finetune=full use rollout.vllm.mode=colocated"
            )
        return VLLMServerEngine(
            model, tokenizer, max_prompt_tokens, o, served_model_name=o.served_model_name or model_config.name_or_path
        )
    return VLLMColocatedEngine(
        model,
        tokenizer,
        max_prompt_tokens,
        o,
        model_config,
        max_model_len=o.max_model_len or default_max_model_len(max_prompt_tokens, rollout),
        seed=seed,
    )
