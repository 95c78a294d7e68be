"""ssp's own batched decoder for Llama-family models: bf16 weights, a preallocated KV cache, slot refill.

Why not `model.generate`: on a CPU a 135M model does ~17 GFLOP of matmuls per decoding step at batch 64,
which AMX bf16 units finish in ~15 ms, yet one HF decoding step takes ~190 ms (docs/performance.md): the
time goes to the dynamic cache, mask building, sampling over the whole vocabulary and Python. This engine
keeps only the arithmetic:

- a private copy of the policy's weights in `rollout.dtype` (bf16 by default; LoRA merged in, q/k/v and
  gate/up fused into one matmul each), rebuilt by `refresh_weights()` after every update;
- a KV cache allocated once per `generate` call, one row per batch slot; each row keeps its own position,
  so a finished row is refilled with the next prompt (prefilled into that slot) while the others keep
  decoding, and when no prompt is left finished rows are packed away so the batch shrinks;
- prompts ordered by length (rows refilled together have similar lengths);
- top-k/top-p sampling on short candidate lists: the top 64 tokens of each row carry the nucleus
  whenever their mass reaches top-p (rows where they do not try 1,024, then a full sort), so sampling
  is exact for the configured temperature/top-k/top-p, as HF's warpers define them.

Supported: decoder-only models with the Llama layout (Llama, Mistral, Qwen2: RMSNorm, rotary
embeddings, grouped-query attention, SiLU-gated MLP, optional q/k/v bias). `supports(model)` says
whether a model fits; `rollout.backend: auto` falls back to `generate` otherwise.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssp.config import SamplingConfig
from ssp.rollout.base import ChatRequest, Completion
from ssp.rollout.chat import ChatEncoder, eos_token_ids

SUPPORTED_TYPES = ("llama", "mistral", "qwen2")
CANDIDATE_TIERS = (64, 1024)  # top-p is decided on these many tokens per row before a full sort
PREFILL_TOKENS = 2048  # tokens per prefill chunk
REFILL_FRACTION = 8  # refill free slots once at least batch_size / REFILL_FRACTION are free

_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}


def _bare(model):
    """The transformers model inside peft / DDP wrappers."""
    model = getattr(model, "module", model)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def supports(model) -> str | None:
    """None when the native decoder can run `model`, else the reason it cannot."""
    config = _bare(model).config
    if config.model_type not in SUPPORTED_TYPES:
        return f"model type {config.model_type!r} (native decoding supports {', '.join(SUPPORTED_TYPES)})"
    if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "mlp_bias", False):
        return "MLP other than bias-free SiLU-gated"
    return None


@dataclass
class _Layer:
    ln1: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    ln2: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """As transformers' LlamaRMSNorm: the variance in float32, the result cast back."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def filter_probs(logits: torch.Tensor, sampling: SamplingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, token ids) per row after temperature, top-k and top-p, as HF's warpers apply them.

    Candidates are chosen on the raw logits (the temperature does not change the order), so the float32
    work is one log-normaliser over the vocabulary plus the candidates. Top-p is decided on the top
    `CANDIDATE_TIERS[0]` tokens of each row; rows whose candidates hold less than top-p of the mass are
    redone with the next tier, then over the full sorted vocabulary, so the result is exact either way.
    Probabilities are not renormalised (the sampler scales by the row total).
    """
    vocab = logits.shape[-1]
    inv_t = 1.0 / sampling.temperature
    if sampling.top_k:  # top-p then works on the top-k distribution, as in HF's warper order
        vals, ids = logits.topk(min(sampling.top_k, vocab), dim=-1)
        vals = torch.nan_to_num(vals.float() * inv_t, nan=0.0)
        probs = torch.exp(vals - torch.logsumexp(vals, dim=-1, keepdim=True))
        if sampling.top_p < 1.0:
            probs = probs * ((probs.cumsum(-1) - probs) < sampling.top_p)
        return probs, ids
    scaled = logits.to(torch.float32, copy=True).mul_(inv_t)  # never in place on the caller's logits
    logz = torch.logsumexp(scaled, dim=-1, keepdim=True)
    if not torch.isfinite(logz).all():  # diverged weights: no crash (as transformers' InfNanRemoveLogitsProcessor)
        scaled = torch.nan_to_num(scaled, nan=0.0)
        logz = torch.logsumexp(scaled, dim=-1, keepdim=True)
    if sampling.top_p >= 1.0:
        return torch.exp(scaled - logz), torch.arange(vocab).expand_as(scaled)
    # (rows, probs, ids) per tier, each cut to its longest nucleus
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    rows = torch.arange(scaled.shape[0])
    for k in (*CANDIDATE_TIERS, vocab):
        k = min(k, vocab)
        if k < vocab:  # candidates from the raw logits (same order; a bf16 topk is cheaper than a float one)
            ids = logits[rows].topk(k, dim=-1).indices
            vals = scaled[rows].gather(-1, ids)
        else:
            vals, ids = scaled[rows].sort(dim=-1, descending=True)
        probs = torch.exp(vals - logz[rows])
        before = probs.cumsum(-1) - probs  # mass of the tokens ranked above each one
        keep = before < sampling.top_p
        covered = torch.ones_like(keep[:, 0]) if k == vocab else (before[:, -1] + probs[:, -1]) >= sampling.top_p
        if not parts and bool(covered.all()):
            return probs * keep, ids
        width = int(keep[covered].sum(-1).max()) if bool(covered.any()) else 0
        parts.append((rows[covered], (probs * keep)[covered, :width], ids[covered, :width]))
        rows = rows[~covered]
        if rows.numel() == 0:
            break
    width = max(p.shape[1] for _, p, _ in parts)
    out_p = torch.zeros(scaled.shape[0], width)
    out_i = torch.zeros(scaled.shape[0], width, dtype=torch.long)
    for r, p, i in parts:
        out_p[r, : p.shape[1]], out_i[r, : i.shape[1]] = p, i
    return out_p, out_i


def sample_tokens(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """One token per row: argmax when temperature is 0, else an inverse-CDF draw from the filtered
    distribution (one uniform per row against the cumulative sums, float64)."""
    if sampling.temperature == 0:
        return torch.nan_to_num(logits, nan=0.0).argmax(-1)
    probs, ids = filter_probs(logits, sampling)
    cdf = probs.to(torch.float64).cumsum(-1)
    total = cdf[:, -1:]
    u = torch.rand(total.shape, dtype=torch.float64) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
    pick = torch.searchsorted(cdf, u, right=True).clamp_(max=ids.shape[-1] - 1)
    return ids.gather(-1, pick).squeeze(-1)


class NativeRolloutEngine:
    """Same interface as `HFRolloutEngine` (and vLLM's): chat requests in, completions out."""

    def __init__(self, model, tokenizer, max_prompt_tokens: int, batch_size: int = 64, dtype: str = "bfloat16"):
        reason = supports(model)
        if reason is not None:
            raise ValueError(f"rollout.backend=native cannot run this model: {reason}; use rollout.backend=hf")
        self.model = model
        self.tokenizer = tokenizer
        self.encoder = ChatEncoder(tokenizer, max_prompt_tokens)
        self.batch_size = batch_size
        self.dtype = _DTYPES[dtype]
        bare = _bare(model)
        self.config = bare.config
        self.eos_ids = set(eos_token_ids(bare, tokenizer))
        self._rotary = next(m for name, m in bare.named_modules() if name.endswith("rotary_emb"))
        c = self.config
        self.n_heads = c.num_attention_heads
        self.n_kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        self.eps = c.rms_norm_eps
        self.refresh_weights()

    # -- weights -----------------------------------------------------------------------------------
    def refresh_weights(self) -> None:
        """The policy changed: the next `generate` rebuilds the decoding weights from it. Lazy, so weights
        loaded into the policy after the engine was built (a resumed checkpoint) are what it decodes with."""
        self._stale = True

    @torch.no_grad()
    def _build_weights(self) -> None:
        """The decoding weights from the policy (LoRA merged, q/k/v and gate/up fused), in the engine's dtype."""
        from ssp.rollout.weights import export_weights

        w = {name: t.to(self.dtype, copy=True) for name, t in export_weights(self.model, only_changed=False)}
        c = self.config
        get = w.__getitem__
        self.embed = get("model.embed_tokens.weight")
        self.lm_head = w.get("lm_head.weight", self.embed)
        self.norm = get("model.norm.weight")
        self.layers = []
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            biases = [b for n in "qkv" if (b := w.get(a + f"{n}_proj.bias")) is not None]
            self.layers.append(
                _Layer(
                    ln1=get(p + "input_layernorm.weight"),
                    qkv=torch.cat([get(a + f"{n}_proj.weight") for n in "qkv"]).contiguous(),
                    qkv_bias=torch.cat(biases) if len(biases) == 3 else None,
                    o=get(a + "o_proj.weight"),
                    o_bias=w.get(a + "o_proj.bias"),
                    ln2=get(p + "post_attention_layernorm.weight"),
                    gate_up=torch.cat([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")]).contiguous(),
                    down=get(p + "mlp.down_proj.weight"),
                )
            )
        self._rope_len = 0
        self._stale = False

    def _rope(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin tables [length, head_dim] from the model's own rotary module (its scaling included)."""
        if length > self._rope_len:
            positions = torch.arange(length)[None]
            cos, sin = self._rotary(torch.zeros(1, dtype=torch.float32), positions)
            self._cos, self._sin = cos[0].to(self.dtype), sin[0].to(self.dtype)
            self._rope_len = length
        return self._cos, self._sin

    # -- the network -----------------------------------------------------------------------------
    def _forward(
        self, ids: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor, cache, prefill: bool, width: int
    ) -> torch.Tensor:
        """Hidden states after the final norm for tokens `ids` [b, s] at `positions` [b, s] of cache `rows`.

        Prefill (s ≥ 1, fresh rows, positions 0..s−1, right-padded): causal attention among the new tokens.
        Decode (s = 1): attention over each row's cache columns ≤ its position, `width` columns in all.
        """
        b, s = ids.shape
        nh, nkv, hd = self.n_heads, self.n_kv, self.head_dim
        cos_t, sin_t = self._rope(int(positions.max()) + 1)
        cos, sin = cos_t[positions][:, None], sin_t[positions][:, None]  # [b, 1, s, hd]
        x = self.embed[ids]
        scale = 1.0 / math.sqrt(hd)
        if not prefill:
            cols = torch.arange(width)
            visible = (cols[None, :] <= positions[:, :1])[:, None, None, :]  # [b, 1, 1, width]
        for layer, (k_cache, v_cache) in zip(self.layers, cache):
            h = rms_norm(x, layer.ln1, self.eps)
            qkv = F.linear(h, layer.qkv, layer.qkv_bias)
            q, k, v = qkv.split([nh * hd, nkv * hd, nkv * hd], dim=-1)
            q = _rotate(q.view(b, s, nh, hd).transpose(1, 2), cos, sin)
            k = _rotate(k.view(b, s, nkv, hd).transpose(1, 2), cos, sin)
            v = v.view(b, s, nkv, hd).transpose(1, 2)
            if prefill:
                k_cache[rows, :, :s] = k
                v_cache[rows, :, :s] = v
                attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=nh != nkv)
            else:
                k_cache[rows, :, positions[:, 0]] = k[:, :, 0]
                v_cache[rows, :, positions[:, 0]] = v[:, :, 0]
                keys, values = k_cache[:b, :, :width], v_cache[:b, :, :width]
                scores = torch.matmul(q.view(b, nkv, nh // nkv, hd), keys.transpose(-1, -2)).float() * scale
                weights = scores.masked_fill(~visible, float("-inf")).softmax(-1).to(self.dtype)
                attn = torch.matmul(weights, values).view(b, nh, 1, hd)
            x = x + F.linear(attn.transpose(1, 2).reshape(b, s, nh * hd), layer.o, layer.o_bias)
            h = rms_norm(x, layer.ln2, self.eps)
            gate, up = F.linear(h, layer.gate_up).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer.down)
        return x

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(rms_norm(hidden, self.norm, self.eps), self.lm_head)  # engine dtype; sampling upcasts

    # -- generation ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, requests: list[ChatRequest], sampling: SamplingConfig, n: int = 1) -> list[list[Completion]]:
        encoded = [self.encoder.encode(r) for r in requests]
        jobs = [(i, ids, trunc) for i, (ids, trunc) in enumerate(encoded) for _ in range(n)]
        if self._stale:  # before the early return: under FSDP/ZeRO-3 building gathers weights on every rank
            self._build_weights()
        if not jobs:
            return [[] for _ in requests]
        outputs = self._run([ids for _, ids, _ in jobs], sampling)
        results: list[list[Completion]] = [[] for _ in requests]
        for (i, prompt, trunc), (ids, finished) in zip(jobs, outputs):
            results[i].append(
                Completion(
                    prompt_ids=prompt,
                    completion_ids=ids,
                    finished=finished,
                    text=self.tokenizer.decode(ids, skip_special_tokens=True),
                    prompt_truncated=trunc,
                )
            )
        return results

    def _run(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[tuple[list[int], bool]]:
        """Decode every prompt; returns (completion ids, finished) in prompt order."""
        max_new = sampling.max_new_tokens
        started = time.perf_counter()
        clock: dict[str, float] = dict.fromkeys(
            ("prefill_s", "decode_s", "sampling_s", "prefill_tokens", "decode_steps", "decode_rows"), 0
        )
        window = getattr(self.config, "sliding_window", None)
        if window and max(len(p) for p in prompts) + max_new > window:
            raise ValueError(
                f"rollout.backend=native: a prompt plus max_new_tokens exceeds the model's sliding "
                f"window ({window}); use rollout.backend=hf"
            )
        pending = deque(sorted(range(len(prompts)), key=lambda j: len(prompts[j])))
        slots = min(self.batch_size, len(prompts))
        width_max = max(len(p) for p in prompts) + max_new
        # Zeros, not empty: masked columns get weight 0, and 0 × a NaN left in uninitialised memory is NaN.
        cache = [
            (
                torch.zeros(slots, self.n_kv, width_max, self.head_dim, dtype=self.dtype),
                torch.zeros(slots, self.n_kv, width_max, self.head_dim, dtype=self.dtype),
            )
            for _ in self.layers
        ]
        job = [-1] * slots  # the prompt each slot works on (-1: free)
        pos = torch.zeros(slots, dtype=torch.long)  # where each slot writes its next token
        last = torch.zeros(slots, dtype=torch.long)  # each slot's latest token (input of the next step)
        out: list[list[int]] = [[] for _ in prompts]
        done: list[bool] = [False] * len(prompts)
        active = 0  # slots [0, active) are in use (free ones among them are waiting for a refill)

        def finish(slot: int, token: int) -> bool:
            """Record `token` for the slot's prompt; True when that prompt is complete."""
            j = job[slot]
            out[j].append(token)
            if token in self.eos_ids:
                done[j] = True
                return True
            return len(out[j]) >= max_new

        def refill(free: list[int]) -> None:
            take = [pending.popleft() for _ in range(min(len(free), len(pending)))]
            free = free[: len(take)]
            # Prefill in chunks of about PREFILL_TOKENS tokens: activations stay in cache (measured faster than
            # one large batch; the matmuls are already efficient at that size).
            width = max(len(prompts[j]) for j in take)
            per_chunk = max(1, PREFILL_TOKENS // width)
            for c in range(0, len(take), per_chunk):
                prefill(free[c : c + per_chunk], take[c : c + per_chunk])

        def prefill(free: list[int], take: list[int]) -> None:
            width = max(len(prompts[j]) for j in take)
            ids = torch.full((len(take), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
            for r, j in enumerate(take):
                ids[r, : len(prompts[j])] = torch.tensor(prompts[j])
            lengths = torch.tensor([len(prompts[j]) for j in take])
            rows = torch.tensor(free)
            t0 = time.perf_counter()
            hidden = self._forward(ids, torch.arange(width).expand(len(take), width), rows, cache, True, width)
            logits = self._logits(hidden[torch.arange(len(take)), lengths - 1])
            t1 = time.perf_counter()
            tokens = sample_tokens(logits, sampling).tolist()
            clock["prefill_s"] += t1 - t0
            clock["sampling_s"] += time.perf_counter() - t1
            clock["prefill_tokens"] += int(lengths.sum())
            for slot, j, length, token in zip(free, take, lengths.tolist(), tokens):
                job[slot] = j
                pos[slot], last[slot] = length, token
                if finish(slot, token):
                    job[slot] = -1

        refill(list(range(slots)))
        active = slots
        threshold = max(1, slots // REFILL_FRACTION)
        while True:
            free = [s for s in range(active) if job[s] == -1]
            if pending and (len(free) >= threshold or len(free) == active):
                refill(free)
                continue
            if not pending and free:  # pack the live slots into [0, active) so the batch shrinks
                for s in free:
                    while active > 0 and job[active - 1] == -1:
                        active -= 1
                    if s >= active:
                        break
                    self._move(cache, active - 1, s)
                    job[s], pos[s], last[s] = job[active - 1], pos[active - 1], last[active - 1]
                    job[active - 1] = -1
                    active -= 1
                while active > 0 and job[active - 1] == -1:
                    active -= 1
            if active == 0:
                break
            p = pos[:active]
            width = int(p.max()) + 1
            t0 = time.perf_counter()
            hidden = self._forward(last[:active, None], p[:, None], torch.arange(active), cache, False, width)
            logits = self._logits(hidden[:, 0])
            t1 = time.perf_counter()
            tokens = sample_tokens(logits, sampling).tolist()
            clock["decode_s"] += t1 - t0
            clock["sampling_s"] += time.perf_counter() - t1
            clock["decode_steps"] += 1
            clock["decode_rows"] += active
            for slot, token in enumerate(tokens):
                if job[slot] == -1:
                    continue  # waiting for a refill: its output is discarded
                pos[slot] += 1
                last[slot] = token
                if finish(slot, token):
                    job[slot] = -1
        clock["total_s"] = time.perf_counter() - started
        clock["other_s"] = clock["total_s"] - clock["prefill_s"] - clock["decode_s"] - clock["sampling_s"]
        self.last_timings = clock
        return [(out[j], done[j]) for j in range(len(prompts))]

    @staticmethod
    def _move(cache, src: int, dst: int) -> None:
        for k_cache, v_cache in cache:
            k_cache[dst] = k_cache[src]
            v_cache[dst] = v_cache[src]
