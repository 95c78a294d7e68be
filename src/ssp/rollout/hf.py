"""Rollouts with transformers' `generate`: batched, left-padded, length-bucketed, chat template applied."""

from __future__ import annotations

import contextlib

import torch

from ssp.config import SamplingConfig
from ssp.rollout.base import ChatRequest, Completion
from ssp.rollout.chat import ChatEncoder, eos_token_ids


def inverse_cdf_sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row from the categorical distribution `probs` ([rows, vocab], rows need not sum to 1).

    Same distribution as `torch.multinomial(probs, 1)`: one uniform per row against the row's cumulative
    sums (float64, so even the rarest tokens keep their probability); `right=True` never lands on a
    zero-probability entry (top-k/top-p filtered tokens). On CPU `torch.multinomial` draws an exponential
    variate for every vocabulary entry instead: 24 ms vs 1 ms per decoding step at 16 rows × 49k tokens
    (benchmarks/rollout_throughput.py, docs/performance.md).
    """
    cdf = probs.to(torch.float64).cumsum(-1)
    total = cdf[:, -1:]
    if not torch.isfinite(total).all():  # as torch.multinomial does, rather than return an index past the vocabulary
        raise RuntimeError("probability tensor contains either inf, nan or element < 0")
    u = torch.rand(total.shape, dtype=torch.float64, device=probs.device, generator=generator) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # u < total even after rounding
    return torch.searchsorted(cdf, u, right=True)


@contextlib.contextmanager
def cpu_fast_sampling():
    """Within the block, `torch.multinomial(p, 1)` on a 2-D CPU tensor (what `generate` calls for each
    sampled token) uses `inverse_cdf_sample`; every other call goes to torch unchanged."""
    original = torch.multinomial

    def multinomial(input, num_samples, replacement=False, *, generator=None, out=None):
        if (
            num_samples == 1
            and input.dim() == 2
            and input.device.type == "cpu"
            and out is None
            and input.is_floating_point()
        ):
            return inverse_cdf_sample(input, generator)
        return original(input, num_samples, replacement, generator=generator, out=out)

    torch.multinomial = multinomial
    try:
        yield
    finally:
        torch.multinomial = original


class HFRolloutEngine:
    def __init__(self, model, tokenizer, max_prompt_tokens: int, batch_size: int = 16, fast_sampling: bool = True):
        self.model = model
        self.fast_sampling = fast_sampling  # inverse-CDF draws instead of torch.multinomial on CPU (same distribution)
        self.tokenizer = tokenizer
        self.encoder = ChatEncoder(tokenizer, max_prompt_tokens)
        self.batch_size = batch_size
        self.eos_ids = set(eos_token_ids(model, tokenizer))
        self.pad_id = tokenizer.pad_token_id

    def refresh_weights(self) -> None:
        """The engine generates with the training model itself: nothing to reload."""

    @torch.no_grad()
    def generate(self, requests: list[ChatRequest], sampling: SamplingConfig, n: int = 1) -> list[list[Completion]]:
        encoded = [self.encoder.encode(r) for r in requests]
        jobs = [(i, ids, trunc) for i, (ids, trunc) in enumerate(encoded) for _ in range(n)]
        # Length-bucketed batches: similar prompt lengths waste less compute on padding.
        order = sorted(range(len(jobs)), key=lambda j: len(jobs[j][1]))
        results: list[list[Completion]] = [[] for _ in requests]
        outputs: dict[int, Completion] = {}
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                for j, completion in zip(chunk, self._generate_batch([jobs[j][1] for j in chunk], sampling)):
                    completion.prompt_truncated = jobs[j][2]
                    outputs[j] = completion
        finally:
            self.model.train(was_training)
        for j, (i, _, _) in enumerate(jobs):
            results[i].append(outputs[j])
        return results

    def _generate_batch(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[Completion]:
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt_ids in enumerate(prompts):
            input_ids[row, width - len(prompt_ids) :] = torch.tensor(prompt_ids)
            attention[row, width - len(prompt_ids) :] = 1
        do_sample = sampling.temperature > 0
        kwargs = dict(
            do_sample=do_sample,
            max_new_tokens=sampling.max_new_tokens,
            pad_token_id=self.pad_id,
            eos_token_id=sorted(self.eos_ids),
            remove_invalid_values=True,
        )  # diverged weights: no crash
        if do_sample:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or None)
        sampler = cpu_fast_sampling() if do_sample and self.fast_sampling else contextlib.nullcontext()
        with sampler:
            out = self.model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
        completions: list[Completion] = []
        for row in out[:, width:].tolist():
            ids: list[int] = []
            finished = False
            for t in row:
                ids.append(t)
                if t in self.eos_ids:
                    finished = True
                    break
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            completions.append(
                Completion(prompt_ids=prompts[len(completions)], completion_ids=ids, text=text, finished=finished)
            )
        return completions
