"""The native decoder: same tokens as transformers' forward, exact sampling, refill independent of batching."""

import math

import pytest
import torch

from ssp.config import SamplingConfig
from ssp.game.seeds import load_seeds
from ssp.models.loader import load_policy
from ssp.rollout.base import ChatRequest
from ssp.rollout.engines import build_rollout_engine, resolve_backend
from ssp.rollout.hf import HFRolloutEngine
from ssp.rollout.native import NativeRolloutEngine, filter_probs, sample_tokens, supports

GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=12)


def _requests(n: int) -> list[ChatRequest]:
    texts = [s.text for s in load_seeds("builtin", "benign")]
    return [ChatRequest([{"role": "user", "content": texts[i % len(texts)]}]) for i in range(n)]


def _perturb_lora(model, seed: int = 0) -> None:
    """LoRA B starts at zero; give the adapter a real effect so merging it is tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _variant(tiny_cfg, **changes):
    """The tiny model rebuilt with other architecture settings (GQA, q/k/v bias, Qwen2)."""
    from transformers import AutoModelForCausalLM

    base, tok = load_policy(tiny_cfg.model.model_copy(update={"finetune": "full"}))
    config = base.config.to_dict()
    model_type = changes.pop("model_type", "llama")
    config.update(changes)
    config.pop("model_type", None)
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(model_type, **config)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval(), tok


def _same_greedy(model, tok, requests, batch_size=5, n=1):
    hf = HFRolloutEngine(model, tok, 256, batch_size=4)
    native = NativeRolloutEngine(model, tok, 256, batch_size=batch_size, dtype="float32")
    a, b = hf.generate(requests, GREEDY, n=n), native.generate(requests, GREEDY, n=n)
    return [[c.completion_ids for c in group] for group in a], [[c.completion_ids for c in group] for group in b], b


def test_greedy_tokens_equal_transformers_with_lora_merged(tiny_cfg, one_torch_thread):
    model, tok = load_policy(tiny_cfg.model)
    _perturb_lora(model)
    reference, native, completions = _same_greedy(model, tok, _requests(9))
    assert native == reference
    for group in completions:
        c = group[0]
        assert c.finished == (c.completion_ids[-1] in {tok.eos_token_id, model.generation_config.eos_token_id})
        assert c.text == tok.decode(c.completion_ids, skip_special_tokens=True)


@pytest.mark.parametrize(
    "changes",
    [
        {"num_key_value_heads": 2},  # grouped-query attention
        {"model_type": "qwen2", "num_key_value_heads": 2},  # q/k/v bias
        {"attention_bias": True},  # Llama with q/k/v/o bias
    ],
)
def test_greedy_tokens_equal_transformers_across_architectures(tiny_cfg, one_torch_thread, changes):
    model, tok = _variant(tiny_cfg, **changes)
    assert supports(model) is None
    reference, native, _ = _same_greedy(model, tok, _requests(6))
    assert native == reference


def test_refill_and_packing_do_not_change_greedy_outputs(tiny_cfg, one_torch_thread):
    """A 3-slot batch refilled many times gives each prompt the tokens it gets alone in a wide batch."""
    model, tok = load_policy(tiny_cfg.model)
    requests = _requests(11)
    wide = NativeRolloutEngine(model, tok, 256, batch_size=64, dtype="float32")
    narrow = NativeRolloutEngine(model, tok, 256, batch_size=3, dtype="float32")
    sampling = SamplingConfig(temperature=0.0, max_new_tokens=20)
    a = [[c.completion_ids for c in g] for g in wide.generate(requests, sampling, n=2)]
    b = [[c.completion_ids for c in g] for g in narrow.generate(requests, sampling, n=2)]
    assert a == b
    assert all(len(g) == 2 for g in b)


def test_refresh_weights_follows_the_policy(tiny_cfg, one_torch_thread):
    model, tok = load_policy(tiny_cfg.model)
    engine = NativeRolloutEngine(model, tok, 256, batch_size=8, dtype="float32")
    requests = _requests(4)
    before = [g[0].completion_ids for g in engine.generate(requests, GREEDY)]
    _perturb_lora(model, seed=1)
    stale = [g[0].completion_ids for g in engine.generate(requests, GREEDY)]
    engine.refresh_weights()
    after = [g[0].completion_ids for g in engine.generate(requests, GREEDY)]
    hf = [g[0].completion_ids for g in HFRolloutEngine(model, tok, 256, 4).generate(requests, GREEDY)]
    assert stale == before  # the engine holds its own copy until refreshed
    assert after == hf and after != before


def _reference_probs(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """transformers' own warpers: temperature, then top-k, then top-p."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    scores = TemperatureLogitsWarper(sampling.temperature)(None, logits.clone())
    if sampling.top_k:
        scores = TopKLogitsWarper(sampling.top_k)(None, scores)
    if sampling.top_p < 1.0:
        scores = TopPLogitsWarper(sampling.top_p)(None, scores)
    return scores.softmax(-1)


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingConfig(temperature=0.7, top_p=0.9),
        SamplingConfig(temperature=1.0, top_p=1.0),
        SamplingConfig(temperature=1.3, top_p=0.95, top_k=20),
        SamplingConfig(temperature=0.5, top_k=5),
        SamplingConfig(temperature=2.0, top_p=0.99),  # flat rows: the nucleus reaches past the candidate list
    ],
)
def test_filtered_distribution_equals_transformers_warpers(sampling):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 500, generator=g) * torch.linspace(0.5, 6.0, 16)[:, None]
    probs, ids = filter_probs(logits, sampling)
    ours = torch.zeros_like(logits).scatter_add_(1, ids, probs.float())
    ours = ours / ours.sum(-1, keepdim=True)
    torch.testing.assert_close(ours, _reference_probs(logits, sampling), atol=1e-6, rtol=1e-5)


def test_sampled_token_frequencies_match_the_distribution():
    """Chi-square goodness of fit of 40,000 draws from one row (top-p 0.9 at T 0.7)."""
    torch.manual_seed(0)
    sampling = SamplingConfig(temperature=0.7, top_p=0.9)
    logits = torch.randn(1, 50) * 0.7  # flat enough that the nucleus holds many tokens
    expected = _reference_probs(logits, sampling)[0]
    draws = sample_tokens(logits.expand(40_000, 50).contiguous(), sampling)
    counts = torch.bincount(draws, minlength=50).double()
    support = expected > 0
    assert counts[~support].sum() == 0  # never a token outside the nucleus
    assert 10 < int(support.sum()) < 50
    e = expected[support].double() * counts.sum()
    chi2 = float(((counts[support] - e) ** 2 / e).sum())
    dof = int(support.sum()) - 1
    assert chi2 < dof + 5 * math.sqrt(2 * dof)  # ≈ p < 1e-4 for a correct sampler


def test_greedy_ignores_non_finite_logits():
    logits = torch.tensor([[float("nan"), 1.0, 3.0], [float("inf"), 0.0, 1.0]])
    assert sample_tokens(logits, GREEDY).tolist() == [2, 0]
    assert sample_tokens(logits, SamplingConfig(temperature=1.0)).shape == (2,)


def test_auto_backend_picks_native_on_cpu_for_llama(tiny_cfg):
    model, tok = load_policy(tiny_cfg.model)
    assert resolve_backend("auto", model) == "native"
    assert isinstance(build_rollout_engine("auto", model, tok, 256, 8), NativeRolloutEngine)
    assert isinstance(build_rollout_engine("hf", model, tok, 256, 8), HFRolloutEngine)


def test_unsupported_architecture_is_named(tiny_cfg):
    model, tok = _variant(tiny_cfg, model_type="gpt2", n_embd=64, n_layer=1, n_head=4, n_positions=512)
    assert "gpt2" in supports(model)
    assert resolve_backend("auto", model) == "hf"
    with pytest.raises(ValueError, match="rollout.backend=hf"):
        NativeRolloutEngine(model, tok, 256)
