"""GRPO: group-relative advantages and the clipped policy-gradient loss with a KL penalty.

Attacker and Defender samples are mixed in one update, accumulated over micro-batches so memory does
not grow with the batch. What the summed per-token losses are divided by is `rl.loss_type`, after TRL's
`GRPOConfig.loss_type`, counted over the whole step on all ranks (filler rows never count):

- `dapo` (default): the step's trained completion tokens; a token mean, every token weighs the same.
- `grpo`: each sample's own completion length, then the number of trained samples; a mean of per-sample
  token means, so a token of a short completion weighs more (the length bias DAPO and Dr. GRPO remove).
- `dr_grpo`: the number of trained samples × the completion budget (the longest rollout `max_new_tokens`),
  a constant per token.
- `bnpo`: each micro-batch's tokens, then the number of micro-batches; it depends on
  `rl.micro_batch_size`, the length-sorted batching and the world size (as TRL warns).

Samples with zero advantage and no SFT weight (flat groups) are not trained under any loss type
(`trainable`): no policy-gradient term (it is 0), no KL term, no count in any denominator, and no
forward or backward pass (often most of a step). The price, chosen knowingly: the KL restrains the
policy only on the samples being pushed, and the denominators of every loss type shrink as the share of
flat groups grows, so a sample's gradient weighs more in a step with more flat groups. TRL keeps them.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace

import torch

from ssp.config import RLConfig


@dataclass
class TrainSample:
    role: str  # "attacker" or "defender"
    prompt_ids: list[int]
    completion_ids: list[int]
    advantage: float
    sft_weight: float = 0.0  # > 0: an SFT term too (distilled reflective refusals, anchored helpful answers)
    temperature: float = 1.0  # the sampling temperature of its role (0 = greedy); log-probs are taken at it


def group_advantages(rewards: list[float], eps: float = 1e-4) -> list[float]:
    """(r − mean) / (std + eps) inside one group; a flat group (no signal) gives zeros."""
    n = len(rewards)
    if n < 2:
        return [0.0] * n
    mean = sum(rewards) / n
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (n - 1))
    if std < 1e-8:
        return [0.0] * n
    return [(r - mean) / (std + eps) for r in rewards]


def collate(
    samples: list[TrainSample], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded [prompt + completion] rows (every completion ends in the last column), explicit
    position ids (padding must not shift positions) and a mask marking the completion tokens:
    (input_ids, attention, positions, completion), the order `completion_logprobs` takes them in."""
    width = max(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    completion = torch.zeros_like(input_ids)
    for row, s in enumerate(samples):
        n, c = len(s.prompt_ids) + len(s.completion_ids), len(s.completion_ids)
        input_ids[row, width - n :] = torch.tensor(s.prompt_ids + s.completion_ids)
        attention[row, width - n :] = 1
        completion[row, width - c :] = 1
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    return input_ids.to(device), attention.to(device), positions.to(device), completion.to(device)


def logprob_temperature(sampling_temperature: float) -> float:
    """The temperature log-probs are taken at: the sampling one; 1 for greedy decoding (T = 0)."""
    return sampling_temperature if sampling_temperature > 0 else 1.0


def completion_logprobs(
    model,
    input_ids: torch.Tensor,
    attention: torch.Tensor,
    positions: torch.Tensor,
    completion: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Log-probabilities of the completion tokens under log_softmax(logits / T), flattened in row order.

    `temperature`: one float, or one value per row. Rollouts sample from softmax(logits / T); the loss's
    ratio and the KL are taken under that same tempered distribution (as TRL does), else the update is
    off-policy from its first step. Top-p / top-k are not applied (nor in TRL): sampled tokens always lie
    inside the nucleus, where the truncated probability is the tempered one divided by the nucleus mass.
    With one epoch per step the ratio is exactly 1 (old = new), so truncation does not enter it and the
    gradient is that of the untruncated tempered log-prob; with several epochs the ratio ignores how the
    nucleus mass moved between epochs (a small bias that the clip bounds).

    Goes through the model's own forward (so DDP/FSDP/DeepSpeed wrappers keep working) and asks for
    the logits of the last K positions only (`logits_to_keep`): with left padding every completion
    lies there, so the fp32 logits over the vocabulary are not built for the prompt tokens.
    """
    keep = int(completion.sum(1).max()) + 1
    logits = (
        model(
            input_ids=input_ids, attention_mask=attention, position_ids=positions, logits_to_keep=keep, use_cache=False
        )
        .logits[:, :-1]
        .float()
    )
    tail = input_ids.shape[1] - keep + 1
    select = completion[:, tail:].bool()
    targets = input_ids[:, tail:][select]
    temps = torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device).reshape(-1, 1)
    per_token = temps.expand(select.shape)[select]  # one temperature per selected token
    return torch.log_softmax(logits[select] / per_token[:, None], dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def autocast(device: torch.device, compute_dtype: str):
    """bf16 autocast for the update's forward passes (master weights stay float32), or nothing."""
    if compute_dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _unwrap(model):
    """The module inside a DDP-style wrapper."""
    return getattr(model, "module", model)


@contextlib.contextmanager
def reference_policy(model, reference_model):
    """The KL reference: LoRA with its adapter disabled (no second copy), else a frozen copy."""
    if reference_model is not None:
        yield reference_model
    elif hasattr(_unwrap(model), "disable_adapter"):
        with _unwrap(model).disable_adapter():
            yield model
    else:
        raise ValueError("rl.kl_coef > 0 with full fine-tuning needs a reference model")


def token_loss_terms(logp, old_logp, ref_logp, advantages, role_weights, sft_weights, clip_eps, kl_coef):
    """Per-token objective: clipped policy gradient + β·KL (k3 estimator) + SFT term; returns (loss, kl)."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    pg = -torch.minimum(unclipped, clipped)
    if ref_logp is not None:
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1.0
    else:
        kl = torch.zeros_like(logp)
    loss = role_weights * (pg + kl_coef * kl) - sft_weights * logp
    return loss, kl


@dataclass
class UpdateStats:
    loss: float
    kl: float
    grad_norm: float
    tokens: int
    samples: int
    skipped: bool = False  # no optimizer step was applied: nothing to train, or the first epoch was non-finite
    epochs: int = 0  # optimizer steps applied: rl.epochs, fewer where a non-finite epoch stopped the update


def trainable(samples: list[TrainSample]) -> list[TrainSample]:
    """Samples that carry a learning signal (a zero advantage and no SFT weight contribute nothing)."""
    return [s for s in samples if s.completion_ids and (s.advantage != 0.0 or s.sft_weight > 0.0)]


@dataclass(frozen=True)
class StepTotals:
    """The step's counts over all ranks that `rl.loss_type` divides by (module docstring)."""

    samples: int  # trained samples
    tokens: int  # their completion tokens
    micro_batches: int  # micro-batches they fill, summed over the ranks' shards (bnpo)
    completion_budget: int | None = None  # the longest completion a rollout may sample (dr_grpo's constant)


def step_totals(
    samples: list[TrainSample], micro_batch_size: int, world: int = 1, completion_budget: int | None = None
) -> StepTotals:
    """Totals of the step's trained samples, dealt round-robin over `world` ranks as `Ranks.shard` deals them."""
    samples = trainable(samples)
    shards = [samples[r::world] for r in range(world)]
    return StepTotals(
        samples=len(samples),
        tokens=sum(len(s.completion_ids) for s in samples),
        micro_batches=sum(math.ceil(len(shard) / micro_batch_size) for shard in shards),
        completion_budget=completion_budget,
    )


def normalised_loss(loss_tokens: torch.Tensor, per_row: list[int], loss_type: str, totals: StepTotals) -> torch.Tensor:
    """One micro-batch's share of the step loss: its per-token losses (rows of `per_row` tokens) summed and divided as
    `loss_type` says (module docstring)."""
    if loss_type == "dapo":
        return loss_tokens.sum() / totals.tokens
    if loss_type == "grpo":
        row_sums = torch.stack([row.sum() for row in loss_tokens.split(per_row)])
        return (row_sums / torch.tensor(per_row, dtype=row_sums.dtype, device=row_sums.device)).sum() / totals.samples
    if loss_type == "dr_grpo":
        if totals.completion_budget is None:
            raise ValueError("rl.loss_type=dr_grpo needs a completion budget: step_totals(..., completion_budget=N)")
        return loss_tokens.sum() / (totals.samples * totals.completion_budget)
    if loss_type == "bnpo":
        return loss_tokens.sum() / (sum(per_row) * totals.micro_batches)
    raise ValueError(f"unknown rl.loss_type {loss_type!r}")


def grpo_update(
    model,
    optimizer,
    samples: list[TrainSample],
    cfg: RLConfig,
    pad_id: int,
    reference_model=None,
    backward=None,
    clip_grad=None,
    totals: StepTotals | None = None,
    loss_scale: float = 1.0,
    min_micro_batches: int = 0,
    filler: TrainSample | None = None,
) -> UpdateStats:
    """One optimisation step (per epoch) over all samples; micro-batched, normalised as `cfg.loss_type` says.

    Distributed use: each rank passes its shard of the step's samples, the whole step's `totals`
    (`step_totals` of all its samples), `loss_scale` = world size (the gradient all-reduce averages over
    ranks), and accelerate's `backward(loss, is_last_micro_batch)` and `clip_grad`. Every rank must run the
    same number of backward passes (the gradient all-reduce happens in them): `min_micro_batches` pads a
    short shard with copies of `filler` that contribute nothing (no policy-gradient, KL or SFT term, in no
    count), so a padded shard gives exactly the loss and gradients of the unpadded one. Defaults are
    single-process torch.

    A non-finite loss or gradient norm in an epoch: that epoch's step is not taken and the update stops
    there. Epochs already applied stay applied (each was a finite step on these samples; undoing them would
    need a copy of the weights and optimizer state, which FSDP and DeepSpeed hold in pieces). The stats say
    which: `epochs` applied, `skipped` only when none was, and loss, kl and grad_norm of the epoch that
    stopped it (non-finite, so the caller sees it); otherwise those of the last epoch.
    """
    samples = trainable(samples)
    totals = totals or step_totals(samples, cfg.micro_batch_size)
    total_tokens = totals.tokens
    if not samples and (total_tokens == 0 or backward is None):
        return UpdateStats(0.0, 0.0, 0.0, 0, 0, skipped=True)
    backward = backward or (lambda loss, last: loss.backward())
    params = [p for p in model.parameters() if p.requires_grad]
    clip_grad = clip_grad or (lambda: torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
    device = next(model.parameters()).device
    # Length-sorted micro-batches waste less compute on padding.
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].prompt_ids) + len(samples[i].completion_ids))
    batches = [
        [samples[i] for i in order[k : k + cfg.micro_batch_size]] for k in range(0, len(order), cfg.micro_batch_size)
    ]
    # Fillers run the same forward and backward passes as real rows (the collectives of DDP/FSDP must line up
    # across ranks) with every term weighted 0, KL included, and count in no denominator or statistic.
    real_batches = len(batches)
    if len(batches) < min_micro_batches:
        blank = replace(filler or samples[0], advantage=0.0, sft_weight=0.0)
        batches += [[blank] for _ in range(min_micro_batches - len(batches))]
    role_weight = {"attacker": cfg.attacker_weight, "defender": cfg.defender_weight}

    def temperatures(batch):
        return torch.tensor([logprob_temperature(s.temperature) for s in batch], device=device)

    amp = autocast(device, cfg.compute_dtype)
    old_logps = None
    if cfg.epochs > 1:  # later epochs need the behaviour policy's log-probs, fixed before the first step
        with torch.no_grad(), amp:
            old_logps = [completion_logprobs(model, *collate(b, pad_id, device), temperatures(b)) for b in batches]

    model.train()
    applied = 0
    for _epoch in range(cfg.epochs):
        optimizer.zero_grad(set_to_none=True)
        loss_sum = kl_sum = 0.0
        for b, batch in enumerate(batches):
            tensors = collate(batch, pad_id, device)
            per_row = tensors[-1].sum(1).tolist()

            def expand(values, per_row=per_row):
                return torch.cat([torch.full((n,), float(v), device=device) for v, n in zip(values, per_row)])

            ref_logp = None
            if cfg.kl_coef > 0:
                with torch.no_grad(), reference_policy(model, reference_model) as ref, amp:
                    ref_logp = completion_logprobs(ref, *tensors, temperatures(batch))
            with amp:
                logp = completion_logprobs(model, *tensors, temperatures(batch))
            old = old_logps[b] if old_logps is not None else logp.detach()
            loss_tokens, kl = token_loss_terms(
                logp,
                old,
                ref_logp,
                advantages=expand([s.advantage for s in batch]),
                role_weights=expand([role_weight[s.role] if b < real_batches else 0.0 for s in batch]),
                sft_weights=expand([s.sft_weight for s in batch]),
                clip_eps=cfg.clip_eps,
                kl_coef=cfg.kl_coef,
            )
            loss = normalised_loss(loss_tokens, per_row, cfg.loss_type, totals)
            backward(loss * loss_scale, b == len(batches) - 1)
            loss_sum += loss.item()
            if b < real_batches:
                kl_sum += kl.detach().sum().item()
        norm = clip_grad()  # None where the engine clips internally (DeepSpeed)
        grad_norm = float(norm) if norm is not None else 0.0
        stats = UpdateStats(loss_sum, kl_sum / total_tokens, grad_norm, total_tokens, len(samples), epochs=applied)
        if not (math.isfinite(loss_sum) and math.isfinite(grad_norm)):
            stats.skipped = applied == 0
            break
        optimizer.step()
        applied = stats.epochs = applied + 1
    optimizer.zero_grad(set_to_none=True)
    return stats
