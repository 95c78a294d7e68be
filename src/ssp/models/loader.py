"""Load the policy (any HF causal LM, the embedded SmolLM2, or the tiny random model) and wrap it for training."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ssp.config import ModelConfig

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_model_source(name_or_path: str) -> str:
    """'embedded' becomes the cached converted folder; anything else is passed to transformers."""
    if name_or_path == "embedded":
        from ssp.models.embedded import embedded_model_dir

        return str(embedded_model_dir())
    return name_or_path


def load_base_model(cfg: ModelConfig, seed: int = 0):
    """Return (model, tokenizer) without any adapter. Tokenizer pads on the left for generation."""
    if cfg.name_or_path == "tiny":
        from ssp.models.tiny import build_tiny_model

        model, tokenizer = build_tiny_model(cfg.tiny, seed=seed)
        model = model.to(_DTYPES[cfg.dtype])
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source = resolve_model_source(cfg.name_or_path)
        common = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=_DTYPES[cfg.dtype], **common)
    check_tokenizer(tokenizer, cfg.name_or_path)
    tokenizer.padding_side = "left"
    return model, tokenizer


def check_tokenizer(tokenizer, name: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"model.name_or_path={name!r}: the tokenizer has no chat template; SSP needs a chat/instruct "
            "model (both roles are chat turns)"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def load_policy(cfg: ModelConfig, seed: int = 0, adapter: str | Path | None = None):
    """The trainable policy: LoRA-wrapped (peft) or the full model.

    With LoRA the KL reference is the same network with the adapter disabled, so no second copy.
    """
    model, tokenizer = load_base_model(cfg, seed=seed)
    if cfg.finetune == "lora":
        from peft import LoraConfig, PeftModel, get_peft_model

        if adapter is not None:
            model = PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
        else:
            lora = LoraConfig(
                r=cfg.lora.r,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                target_modules=cfg.lora.target_modules,
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, lora)
    elif adapter is not None:
        raise ValueError("an adapter was given but model.finetune is 'full'")
    return model, tokenizer


def is_lora(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
