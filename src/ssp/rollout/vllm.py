"""vLLM rollouts (optional extra `ssp[vllm]`): a colocated in-process engine, or a separate `vllm serve`.

Both modes render prompts with our own `ChatEncoder` and send vLLM the prompt TOKEN IDS, so the
prompt the policy is trained on is byte-for-byte the prompt the engine continued, exactly as with
the HF backend. Both return completions as token ids (never re-tokenised text, when the server
says which ids it sampled). Texts are decoded here with the policy's tokenizer.

Weight refresh after each update (`refresh_weights`, called by the trainer on every rank):

* **colocated** — every training rank owns an in-process `vllm.LLM` on its own GPU (or shares
  one with the other ranks of its tensor-parallel group). After an update the rank streams
  `(name, tensor)` pairs into the engine's model through vLLM's `load_weights`:
  - full fine-tuning: every trainable parameter;
  - LoRA: for each LoRA-wrapped module the merged weight `W + ΔW` (computed with peft's own
    `get_delta_weight`, exactly as `merge_and_unload()` would, on a copy: the training weights are
    never touched), plus any other trainable parameter. Frozen weights are identical to what the
    engine loaded at start, so they are not re-sent.
  We merge rather than use vLLM's LoRA requests because (1) generation then runs the plain dense
  kernels at full speed, with no punica/LoRA kernel overhead and no `max_lora_rank` or
  supported-target-module limits, (2) no adapter file is written or read per step, and (3) full
  fine-tuning and LoRA share one path. The price is re-sending the LoRA-targeted matrices each step
  (a GPU-local copy, ~ the size of those matrices) instead of the small adapter.
  Names are Hugging Face checkpoint names (peft prefixes and `.base_layer` removed), which is
  what vLLM's `load_weights` consumes (it maps q/k/v onto its fused `qkv_proj` and gate/up onto
  `gate_up_proj` itself; see `vllm_parameter_name`). The prefix cache is reset afterwards, so no
  KV block computed with the old weights is reused.
* **server** — LoRA only (a remote server cannot take our tensors over HTTP). Rank 0 saves the
  adapter with peft under `rollout.vllm.lora_dir` (a folder the server can read), asks the server
  to load it through `/v1/load_lora_adapter` under a NEW name per version
  (`<adapter_name>-<run token>-v<k>`), switches generation to that name, and unloads the previous
  one. New names, not `load_inplace`: a new name is a new LoRA id in vLLM, so neither its adapter
  cache nor its prefix cache can serve the old weights, and it works on every vLLM version with
  runtime LoRA loading. The server must run with `--enable-lora --max-lora-rank >= r` and
  `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`. Every rank waits (barrier) until the new adapter is live.

In both modes the first push happens lazily, on the first `generate` after construction: by then a
resumed run has loaded its checkpoint into the policy, so the engine never starts from stale weights.

Completion token ids in server mode come from the response's `token_ids` (vLLM's
`return_token_ids`, newer servers), else from the logprobs tokens rendered as `token_id:<id>`
(`return_tokens_as_token_ids`, older servers); both are requested. Only if neither is present is
the text re-tokenised, which can differ from what was sampled; those completions carry
`meta["token_ids_source"] == "retokenized"` and a warning is logged.

What can run without a GPU is separated into pure functions and tested in tests/test_scaleout.py:
`export_weights` (against peft's `merge_and_unload`), `vllm_parameter_name`, `sampling_params`,
`completion_request`, `token_ids_from_choice`, `build_completion`, the adapter save, and the whole
server mode against a local HTTP server that serves the tiny model through the HF backend.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import secrets
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from ssp.config import ModelConfig, RolloutConfig, SamplingConfig, VLLMRolloutConfig
from ssp.rollout.base import ChatRequest, Completion
from ssp.rollout.chat import ChatEncoder

log = logging.getLogger(__name__)

INSTALL_HINT = ("rollout.backend=vllm with rollout.vllm.mode=colocated needs vLLM in this environment: "
                "pip install 'ssp[vllm]' (Linux with an NVIDIA GPU). Server mode only needs a reachable "
                "`vllm serve` (see docs/gpu.md).")


def import_vllm():
    """The `vllm` module, imported lazily; a clear error when the extra is not installed."""
    # Keep vLLM's engine core in this process: weights are pushed into the model object directly.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from e
    return vllm


# ---------------------------------------------------------------------------------------------
# Sampling and requests (pure)
# ---------------------------------------------------------------------------------------------


def eos_token_ids(model, tokenizer) -> list[int]:
    """End-of-turn ids, as the HF backend uses them: the generation config's EOS and the tokenizer's."""
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {tokenizer.eos_token_id}
    ids.discard(None)
    # The tokenizer's EOS first: it is the one appended if a server drops the stop token (see below).
    first = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return first + sorted(ids - set(first))


def samples_per_call(sampling: SamplingConfig, n: int) -> int:
    """Greedy decoding gives one answer; ask once and copy it (vLLM may refuse n > 1 when greedy)."""
    return 1 if sampling.temperature == 0 else n


def sampling_params(sampling: SamplingConfig, n: int, stop_token_ids: Iterable[int]) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams` equivalent to the HF backend's `generate` call.

    `top_k = 0` (ours: off) is left out: vLLM's own default means "off" in every version (older ones
    reject 0). Temperature 0 is greedy in vLLM as in HF.
    """
    kw: dict[str, Any] = {
        "n": samples_per_call(sampling, n),
        "temperature": sampling.temperature,
        "top_p": sampling.top_p if sampling.temperature > 0 else 1.0,
        "max_tokens": sampling.max_new_tokens,
        "stop_token_ids": list(stop_token_ids),
        "skip_special_tokens": True,
    }
    if sampling.top_k > 0 and sampling.temperature > 0:
        kw["top_k"] = sampling.top_k
    return kw


def completion_request(prompt_ids: list[int], sampling: SamplingConfig, n: int, model: str,
                       stop_token_ids: Iterable[int]) -> dict[str, Any]:
    """The JSON body for vLLM's OpenAI-compatible `/v1/completions`, prompt given as token ids.

    Asks for the sampled ids twice over: `return_token_ids` (a `token_ids` list per choice, newer
    vLLM) and `logprobs: 0` + `return_tokens_as_token_ids` (logprob tokens as "token_id:<id>",
    older vLLM). Unknown fields are ignored by servers that lack them.
    """
    body: dict[str, Any] = {"model": model, "prompt": [int(t) for t in prompt_ids], "stream": False}
    body.update(sampling_params(sampling, n, stop_token_ids))
    body.update({"return_token_ids": True, "logprobs": 0, "return_tokens_as_token_ids": True})
    return body


_TOKEN_ID = re.compile(r"^token_id:(\d+)$")


def token_ids_from_choice(choice: dict[str, Any], tokenizer=None) -> tuple[list[int], str]:
    """(completion ids, where they came from) for one `/v1/completions` choice."""
    ids = choice.get("token_ids")
    if isinstance(ids, list) and all(isinstance(t, int) for t in ids):
        return list(ids), "token_ids"
    tokens = (choice.get("logprobs") or {}).get("tokens")
    if isinstance(tokens, list) and tokens:
        matches = [_TOKEN_ID.match(t) if isinstance(t, str) else None for t in tokens]
        if all(matches):
            return [int(m.group(1)) for m in matches], "logprobs"
    if tokenizer is None:
        raise ValueError("the server's answer carries no token ids (neither `token_ids` nor "
                         "`token_id:<id>` logprob tokens) and no tokenizer was given to re-tokenise")
    text = choice.get("text") or ""
    return tokenizer(text, add_special_tokens=False)["input_ids"], "retokenized"


def build_completion(token_ids: Iterable[int], finish_reason: str | None, stop_reason: Any,
                     prompt_ids: list[int], tokenizer, eos_ids: list[int], prompt_truncated: bool = False,
                     source: str = "engine") -> Completion:
    """A `Completion` with the HF backend's conventions from what vLLM returned.

    Ids are cut after the first end-of-turn token. vLLM keeps the stop token in `token_ids`; if an
    answer ended with "stop" but the stop token is missing (re-tokenised text, or a server that
    drops it) it is appended: `stop_reason` names it, or None means the model's EOS.
    `finished` is True exactly when the ids end with an end-of-turn token.
    """
    eos = set(eos_ids)
    ids = [int(t) for t in token_ids]
    cut = next((i for i, t in enumerate(ids) if t in eos), None)
    inferred = False
    if cut is not None:
        ids = ids[: cut + 1]
    elif finish_reason == "stop" and eos_ids and (
            stop_reason is None or (isinstance(stop_reason, int) and stop_reason in eos)):
        ids.append(stop_reason if isinstance(stop_reason, int) else eos_ids[0])
        inferred = True
    meta: dict[str, Any] = {}
    if source not in ("engine", "token_ids", "logprobs"):
        meta["token_ids_source"] = source
    if inferred:
        meta["eos_appended"] = True
    return Completion(prompt_ids=list(prompt_ids), completion_ids=ids,
                      text=tokenizer.decode(ids, skip_special_tokens=True),
                      finished=bool(ids) and ids[-1] in eos, prompt_truncated=prompt_truncated, meta=meta)


def _copies(c: Completion, n: int) -> list[Completion]:
    return [c] + [dataclasses.replace(c, prompt_ids=list(c.prompt_ids), completion_ids=list(c.completion_ids),
                                      meta=dict(c.meta)) for _ in range(n - 1)]


def completions_from_response(body: dict[str, Any], prompt_ids: list[int], n: int, tokenizer, eos_ids: list[int],
                              prompt_truncated: bool = False) -> list[Completion]:
    """The `n` completions of one single-prompt `/v1/completions` answer, in choice order."""
    choices = sorted(body.get("choices") or [], key=lambda c: c.get("index", 0))
    if not choices:
        raise ValueError(f"the server answered without choices: {str(body)[:300]}")
    out = []
    for choice in choices:
        ids, source = token_ids_from_choice(choice, tokenizer)
        out.append(build_completion(ids, choice.get("finish_reason"), choice.get("stop_reason"), prompt_ids,
                                    tokenizer, eos_ids, prompt_truncated, source))
    if len(out) == 1 and n > 1:
        return _copies(out[0], n)
    if len(out) != n:
        raise ValueError(f"asked the server for {n} samples, got {len(out)}")
    return out


# ---------------------------------------------------------------------------------------------
# Weight export (pure up to the optional gathering of sharded parameters)
# ---------------------------------------------------------------------------------------------

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
                name, changed = name[len(prefix):], True
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


def _is_zero3(p: torch.Tensor) -> bool:
    return hasattr(p, "ds_id")


@contextlib.contextmanager
def _gathered(params: list[torch.Tensor]):
    """DeepSpeed ZeRO-3: make the full parameters visible inside the block (a collective)."""
    zero = [p for p in params if _is_zero3(p)]
    if not zero:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(zero, modifier_rank=None):
        yield


@contextlib.contextmanager
def _unsharded(model):
    """FSDP2 (`fully_shard`): all-gather every FSDP unit for the block (a collective; one full copy)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - old torch
        FSDPModule = ()  # noqa: N806
    units = [m for m in model.modules() if FSDPModule and isinstance(m, FSDPModule)]
    for u in units:
        u.unshard()
    try:
        yield
    finally:
        for u in units:
            u.reshard()


def _full(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor: DTensors (FSDP2 / tensor parallel) are all-gathered."""
    t = t.detach()
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _lora_layers(model) -> dict[str, Any]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def _merged_lora(module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias or None) of a LoRA layer with its active adapters merged, as peft's (unsafe) merge
    computes it — `weight += get_delta_weight(adapter)` per adapter — but on a copy."""
    base = module.get_base_layer()
    weight = _full(base.weight).clone()
    bias = None
    for adapter in module.active_adapters:
        if adapter in module.merged_adapters:
            continue  # already inside the base weight
        if adapter not in module.lora_A and adapter not in getattr(module, "lora_embedding_A", {}):
            continue
        if adapter in getattr(module, "lora_variant", {}):
            raise NotImplementedError(f"weight export: LoRA variant {type(module.lora_variant[adapter]).__name__} "
                                      "(e.g. DoRA) is not supported; use plain LoRA")
        weight += module.get_delta_weight(adapter)
        if getattr(module, "lora_bias", {}).get(adapter):
            if bias is None:
                bias = _full(base.bias).clone()
            bias += _full(module.lora_B[adapter].bias) * module.scaling[adapter]
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
    lora = _lora_layers(model)
    lora_param_ids = {id(p) for m in lora.values() for p in m.parameters()}
    with _unsharded(model):
        for module_name, module in lora.items():
            with _gathered(list(module.parameters())):
                weight, bias = _merged_lora(module)
                base_name = hf_checkpoint_name(module_name)
                yield f"{base_name}.weight", weight
                base_bias = getattr(module.get_base_layer(), "bias", None)
                if bias is not None:
                    yield f"{base_name}.bias", bias
                elif base_bias is not None and not only_changed:
                    yield f"{base_name}.bias", _full(base_bias)
        for name, p in model.named_parameters():
            if id(p) in lora_param_ids or ".lora_" in name or ".original_module." in name:
                continue
            if only_changed and not p.requires_grad:
                continue
            with _gathered([p]):
                yield hf_checkpoint_name(name), _full(p)


def lora_adapter_state(model) -> dict[str, torch.Tensor]:
    """The LoRA adapter's tensors (peft names, full, on the CPU), for `save_pretrained(state_dict=…)`.

    A collective under ZeRO-3 / FSDP2: every rank calls it.
    """
    state: dict[str, torch.Tensor] = {}
    with _unsharded(model):
        for name, p in model.named_parameters():
            if ".lora_" in name:
                with _gathered([p]):
                    state[name] = _full(p).to("cpu", copy=True)
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


# ---------------------------------------------------------------------------------------------
# Distributed helpers (no-ops in one process)
# ---------------------------------------------------------------------------------------------


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _rank_world() -> tuple[int, int]:
    dist = _dist()
    return (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)


def _barrier() -> None:
    dist = _dist()
    if dist:
        dist.barrier()


def _broadcast(obj: Any) -> Any:
    dist = _dist()
    if not dist:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------------------------------------
# Colocated engine
# ---------------------------------------------------------------------------------------------


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
        raise RuntimeError(f"vLLM's {type(vllm_model).__name__}.load_weights rejected an exported weight ({e}); "
                           "the policy's parameter names do not match the architecture vLLM loaded") from e
    return count


def push_weights(llm, weights: Iterable[tuple[str, torch.Tensor]]) -> int:
    """Load `weights` into the model inside a (same-process) `vllm.LLM`, then drop stale prefix-cache blocks."""
    if hasattr(llm, "apply_model"):  # vLLM ≥ 0.8, V0 and V1: runs on the worker, in-process here
        counts = llm.apply_model(lambda m: _load_into(m, weights))
        count = counts[0] if counts else 0
    else:  # older V0 layout
        count = _load_into(llm.llm_engine.model_executor.driver_worker.model_runner.model, weights)
    if hasattr(llm, "reset_prefix_cache"):
        llm.reset_prefix_cache()
    return count


class VLLMColocatedEngine:
    """An in-process `vllm.LLM` per rank (or per tensor-parallel group of ranks) on the training GPU."""

    def __init__(self, model, tokenizer, max_prompt_tokens: int, options: VLLMRolloutConfig, model_config: ModelConfig,
                 max_model_len: int, seed: int = 0, llm=None):
        self.model = model
        self.tokenizer = tokenizer
        self.encoder = ChatEncoder(tokenizer, max_prompt_tokens)
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.options = options
        self.rank, self.world = _rank_world()
        tp = options.tensor_parallel_size
        if tp > 1 and (self.world % tp or self.world < tp):
            raise ValueError(f"rollout.vllm.tensor_parallel_size={tp} in colocated mode needs a multiple of {tp} "
                             f"training processes (each rank holds one shard); got {self.world}. "
                             "Use server mode for a tensor-parallel engine on separate GPUs.")
        self.tp_group = None
        if tp > 1:
            dist = _dist()
            self.tp_group, _ = dist.new_subgroups_by_enumeration(
                [list(range(s, s + tp)) for s in range(0, self.world, tp)])
        self._tmp = None
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
            model=source, revision=revision, dtype=model_config.dtype, trust_remote_code=model_config.trust_remote_code,
            gpu_memory_utilization=o.gpu_memory_utilization, tensor_parallel_size=o.tensor_parallel_size,
            max_model_len=max_model_len, enable_prefix_caching=o.enable_prefix_caching, enforce_eager=o.enforce_eager,
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
        parts = [encoded]
        if self.tp_group is not None:  # the ranks of a TP group drive one engine: they submit the same batch
            dist = _dist()
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
            comps = [build_completion(o.token_ids, o.finish_reason, getattr(o, "stop_reason", None), ids,
                                      self.tokenizer, self.eos_ids, truncated)
                     for o in sorted(out.outputs, key=lambda o: o.index)]
            results.append(_copies(comps[0], n) if len(comps) == 1 and n > 1 else comps)
        if self.tp_group is not None:
            start = sum(len(p) for p in parts[: dist.get_rank(self.tp_group)])
            results = results[start : start + len(encoded)]
        return results

    def close(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


# ---------------------------------------------------------------------------------------------
# Server engine
# ---------------------------------------------------------------------------------------------


class VLLMServerError(RuntimeError):
    """The vLLM server could not be reached or refused a request (message says which and why)."""


class VLLMServerEngine:
    """Rollouts from a separately started `vllm serve` (OpenAI-compatible), LoRA refreshed by name."""

    RETRIES = 3

    def __init__(self, model, tokenizer, max_prompt_tokens: int, options: VLLMRolloutConfig, served_model_name: str,
                 client=None):
        import httpx

        if not _lora_layers(model):
            raise ValueError("rollout.vllm.mode=server refreshes the policy as a LoRA adapter, but the policy has "
                             "no LoRA layers (model.finetune=full: use rollout.vllm.mode=colocated)")
        self.model = model
        self.tokenizer = tokenizer
        self.encoder = ChatEncoder(tokenizer, max_prompt_tokens)
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.options = options
        self.base_url = options.base_url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[: -len("/v1")]
        self.served_model_name = served_model_name
        self.rank, self.world = _rank_world()
        headers = {}
        key = os.environ.get(options.api_key_env) if options.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.client = client or httpx.Client(
            base_url=self.base_url, headers=headers, timeout=httpx.Timeout(options.timeout_s, connect=30.0),
            limits=httpx.Limits(max_connections=options.max_concurrency))
        self.lora_dir = Path(options.lora_dir or tempfile.mkdtemp(prefix="ssp-vllm-lora-"))
        self.version = 0
        self.model_name = served_model_name
        self.run_token = _broadcast(secrets.token_hex(3) if self.rank == 0 else None)
        self._warned_retokenized = False
        if self.rank == 0:
            self._check_served_model()
        # The first generate loads the adapter: by then a resumed run has loaded its checkpoint.
        self._stale = True

    # -- HTTP --------------------------------------------------------------------------------
    def _request(self, method: str, path: str, json: dict | None = None):
        import httpx

        last: Exception | None = None
        for attempt in range(self.RETRIES):
            try:
                r = self.client.request(method, path, json=json)
            except httpx.TransportError as e:  # connection refused, reset, timeout
                last = e
            else:
                if r.status_code < 500 and r.status_code != 429:
                    return r
                last = VLLMServerError(f"{method} {self.base_url}{path}: HTTP {r.status_code}: {r.text[:500]}")
            time.sleep(min(8.0, 0.5 * 2**attempt))
        raise VLLMServerError(f"vLLM server at {self.base_url} failed {method} {path} {self.RETRIES} times; last "
                              f"error: {last}. Is `vllm serve` running there (docs/gpu.md)?") from last

    def _check_served_model(self) -> None:
        r = self._request("GET", "/v1/models")
        if r.status_code != 200:
            raise VLLMServerError(f"GET {self.base_url}/v1/models: HTTP {r.status_code}: {r.text[:300]}")
        ids = [m.get("id") for m in r.json().get("data", [])]
        if self.served_model_name not in ids:
            raise VLLMServerError(f"the vLLM server at {self.base_url} serves {ids}, not "
                                  f"{self.served_model_name!r}; set rollout.vllm.served_model_name")

    # -- refresh -----------------------------------------------------------------------------
    def refresh_weights(self) -> None:
        """Save the adapter (rank 0), load it under a new name, unload the previous one; all ranks wait."""
        state = lora_adapter_state(self.model)  # collective under ZeRO-3 / FSDP2
        version = self.version + 1
        name = f"{self.options.adapter_name}-{self.run_token}-v{version}"
        error = None
        if self.rank == 0:
            try:
                folder = save_adapter(self.model, self.lora_dir / name, state)
                r = self._request("POST", "/v1/load_lora_adapter",
                                  json={"lora_name": name, "lora_path": str(folder.resolve())})
                if r.status_code != 200:
                    hint = (" (the server needs --enable-lora, --max-lora-rank ≥ the adapter's r and "
                            "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)" if r.status_code in (400, 404) else "")
                    raise VLLMServerError(f"vLLM refused adapter {name} from {folder}: HTTP {r.status_code}: "
                                          f"{r.text[:300]}{hint}")
                if self.version:
                    self._unload(self.model_name)
            except Exception as e:  # noqa: BLE001 - re-raised on every rank below
                error = f"{type(e).__name__}: {e}"
        error = _broadcast(error)
        if error:
            raise VLLMServerError(f"LoRA refresh failed: {error}")
        _barrier()
        self.version, self.model_name = version, name
        self._stale = False

    def _unload(self, name: str) -> None:
        r = self._request("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
        if r.status_code != 200:
            log.warning("vLLM did not unload adapter %s: HTTP %s %s", name, r.status_code, r.text[:200])
        shutil.rmtree(self.lora_dir / name, ignore_errors=True)

    # -- generation --------------------------------------------------------------------------
    def _complete(self, job: tuple[list[int], bool], sampling: SamplingConfig, n: int) -> list[Completion]:
        ids, truncated = job
        body = completion_request(ids, sampling, n, self.model_name, self.eos_ids)
        r = self._request("POST", "/v1/completions", json=body)
        if r.status_code != 200:
            raise VLLMServerError(f"POST {self.base_url}/v1/completions (model {self.model_name}): "
                                  f"HTTP {r.status_code}: {r.text[:500]}")
        comps = completions_from_response(r.json(), ids, n, self.tokenizer, self.eos_ids, truncated)
        if not self._warned_retokenized and any(c.meta.get("token_ids_source") == "retokenized" for c in comps):
            self._warned_retokenized = True
            log.warning("the vLLM server returned no token ids; completions are re-tokenised text, which may differ "
                        "from the sampled ids (upgrade vLLM for `return_token_ids`)")
        return comps

    def generate(self, requests: list[ChatRequest], sampling: SamplingConfig, n: int = 1) -> list[list[Completion]]:
        if self._stale:  # before the early return: every rank must take part (barrier)
            self.refresh_weights()
        if not requests:
            return []
        jobs = [self.encoder.encode(r) for r in requests]
        # One request per prompt (n samples each); vLLM batches concurrent requests itself.
        with ThreadPoolExecutor(max_workers=min(self.options.max_concurrency, len(jobs))) as pool:
            return list(pool.map(lambda job: self._complete(job, sampling, n), jobs))

    def close(self) -> None:
        """Unload the current adapter and close the connection pool (optional; the server keeps running)."""
        if self.rank == 0 and self.version:
            with contextlib.suppress(Exception):
                self._unload(self.model_name)
        self.client.close()


# ---------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------


def default_max_model_len(max_prompt_tokens: int, rollout: RolloutConfig) -> int:
    return max_prompt_tokens + max(rollout.attacker.max_new_tokens, rollout.defender.max_new_tokens)


def build_vllm_engine(model, tokenizer, max_prompt_tokens: int, rollout: RolloutConfig | None,
                      model_config: ModelConfig | None, seed: int = 0):
    if rollout is None or model_config is None:
        raise ValueError("rollout.backend=vllm needs the run's configs: call build_rollout_engine(..., "
                         "rollout=cfg.rollout, model_config=cfg.model, seed=cfg.run.seed)")
    o = rollout.vllm
    if o.mode == "server":
        if model_config.finetune != "lora":
            raise ValueError("rollout.vllm.mode=server refreshes the policy as a LoRA adapter; with "
                             "model.finetune=full use rollout.vllm.mode=colocated")
        return VLLMServerEngine(model, tokenizer, max_prompt_tokens, o,
                                served_model_name=o.served_model_name or model_config.name_or_path)
    return VLLMColocatedEngine(model, tokenizer, max_prompt_tokens, o, model_config,
                               max_model_len=o.max_model_len or default_max_model_len(max_prompt_tokens, rollout),
                               seed=seed)
