"""The policy's weights as a plain model: merged LoRA or full tensors under HF names (for the native CPU decoder
and vLLM), and peft adapters.

Pure up to the gathering of sharded parameters (FSDP2, ZeRO-3), which is a collective: every rank
consumes the streams. Tested on CPU against peft's `merge_and_unload` (tests/test_scaleout.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ssp.parallel import fsdp_unsharded, full_tensor, zero3_gathered

_PREFIXES = ("module.", "_orig_mod.", "base_model.model.")


def hf_checkpoint_name(name: str) -> str:
    """A (possibly peft-, DDP- or compile-wrapped) parameter name as a plain HF checkpoint name.

    `base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight` →
    `model.layers.0.self_attn.q_proj.weight`; `…lm_head.modules_to_save.default.weight` → `lm_head.weight`.
    """
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    name = name.replace("._orig_mod.", ".").replace(".base_layer.", ".")
    return re.sub(r"\.modules_to_save\.[^.]+\.", ".", name)


#: vLLM's Llama/Qwen2/Mistral loaders fuse these HF matrices into one parameter (fused name, HF name, shard).
VLLM_STACKED_PARAMS = (
    (".qkv_proj", ".q_proj", "q"),
    (".qkv_proj", ".k_proj", "k"),
    (".qkv_proj", ".v_proj", "v"),
    (".gate_up_proj", ".gate_proj", 0),
    (".gate_up_proj", ".up_proj", 1),
)


def vllm_parameter_name(hf_name: str) -> tuple[str, str | int | None]:
    """(vLLM parameter, shard id) that vLLM's Llama-family `load_weights` fills from an HF-named tensor.

    Documentation and test aid: we push HF names and vLLM applies this mapping itself.
    """
    for fused, part, shard in VLLM_STACKED_PARAMS:
        if part in hf_name:
            return hf_name.replace(part, fused), shard
    return hf_name, None


def lora_layers(model) -> dict[str, Any]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def _merged_lora(module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias or None) of a LoRA layer with its active adapters merged, as peft's (unsafe) merge
    computes it — `weight += get_delta_weight(adapter)` per adapter — but on a copy."""
    base = module.get_base_layer()
    weight = full_tensor(base.weight).clone()
    bias = None
    for adapter in module.active_adapters:
        if adapter in module.merged_adapters:
            continue  # already inside the base weight
        if adapter not in module.lora_A and adapter not in getattr(module, "lora_embedding_A", {}):
            continue
        if adapter in getattr(module, "lora_variant", {}):
            raise NotImplementedError(
                f"weight export: LoRA variant {type(module.lora_variant[adapter]).__name__} "
                "(e.g. DoRA) is not supported; use plain LoRA"
            )
        weight += module.get_delta_weight(adapter)
        if getattr(module, "lora_bias", {}).get(adapter):
            if bias is None:
                bias = full_tensor(base.bias).clone()
            bias += full_tensor(module.lora_B[adapter].bias) * module.scaling[adapter]
    return weight, bias


def export_weights(model, only_changed: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream (HF checkpoint name, tensor) pairs of the policy as a plain (merged) model.

    LoRA (peft): each LoRA-wrapped module yields its merged weight (equal to `merge_and_unload()`);
    other parameters pass through under their base-model names; adapter tensors are never yielded.
    `only_changed`: only what training can have changed since the engine loaded the base model
    (merged LoRA modules and trainable parameters); otherwise every parameter (tied ones once).

    Tensors are streamed: a pair is valid until the next one is requested (under ZeRO-3 the
    gathered storage is released); clone what you keep. Sharded parameters (ZeRO-3, FSDP2) are
    gathered, so every rank must consume the stream (it is a collective).
    """
    lora = lora_layers(model)
    lora_param_ids = {id(p) for m in lora.values() for p in m.parameters()}
    with fsdp_unsharded(model):
        for module_name, module in lora.items():
            with zero3_gathered(list(module.parameters())):
                weight, bias = _merged_lora(module)
                base_name = hf_checkpoint_name(module_name)
                yield f"{base_name}.weight", weight
                base_bias = getattr(module.get_base_layer(), "bias", None)
                if bias is not None:
                    yield f"{base_name}.bias", bias
                elif base_bias is not None and not only_changed:
                    yield f"{base_name}.bias", full_tensor(base_bias)
        for name, p in model.named_parameters():
            if id(p) in lora_param_ids or ".lora_" in name or ".original_module." in name:
                continue
            if only_changed and not p.requires_grad:
                continue
            with zero3_gathered([p]):
                yield hf_checkpoint_name(name), full_tensor(p)


def lora_adapter_state(model) -> dict[str, torch.Tensor]:
    """The LoRA adapter's tensors (peft names, full, on the CPU), for `save_pretrained(state_dict=…)`.

    A collective under ZeRO-3 / FSDP2: every rank calls it.
    """
    state: dict[str, torch.Tensor] = {}
    with fsdp_unsharded(model):
        for name, p in model.named_parameters():
            if ".lora_" in name:
                with zero3_gathered([p]):
                    state[name] = full_tensor(p).to("cpu", copy=True)
    return state


def save_adapter(model, folder: str | Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the adapter as peft does (`adapter_config.json` + `adapter_model.safetensors`): the layout
    vLLM's LoRA loader reads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = lora_adapter_state(model) if state is None else state
    model.save_pretrained(str(folder), state_dict=state, safe_serialization=True, save_embedding_layers=False)
    return folder


def materialize_model(model, tokenizer, folder: str | Path) -> Path:
    """Write the policy (LoRA merged) as an HF model folder vLLM can load: config, tokenizer, safetensors.

    Used for models that exist only in memory (`model.name_or_path: tiny`).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in export_weights(model, only_changed=False)}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    base.config.save_pretrained(str(folder))
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
