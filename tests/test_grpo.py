"""The GRPO update against a direct computation from full logits, on the tiny model."""

import math
from dataclasses import replace

import pytest
import torch

from ssp.config import RLConfig
from ssp.models.loader import load_policy
from ssp.rl.grpo import TrainSample, collate, completion_logprobs, group_advantages, grpo_update, step_totals


def test_group_advantages_known_values():
    adv = group_advantages([1.0, 0.0, 0.0, 1.0], eps=0.0)
    std = math.sqrt(sum((x - 0.5) ** 2 for x in [1, 0, 0, 1]) / 3)
    assert adv == pytest.approx([0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std])
    assert group_advantages([0.3, 0.3, 0.3]) == [0.0, 0.0, 0.0]  # flat group: no signal
    assert group_advantages([0.7]) == [0.0]


def _samples():
    g = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(5, 250, (n,), generator=g).tolist()

    return [
        TrainSample("attacker", ids(7), ids(5), advantage=1.2),
        TrainSample("defender", ids(4), ids(9), advantage=-0.7),
        TrainSample("defender", ids(11), ids(3), advantage=0.4, sft_weight=0.1),
    ]


def _live_adapter_policy(tiny_cfg):
    """The tiny policy with a non-zero LoRA B, so the policy differs from its reference and the KL term is live."""
    torch.manual_seed(0)
    model, tok = load_policy(tiny_cfg.model, seed=0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model, tok


def _reference_loss(model, samples, cfg: RLConfig, pad_id):
    """Full-logit computation, sample by sample, written independently of the implementation."""
    total_tokens = sum(len(s.completion_ids) for s in samples)
    weights = {"attacker": cfg.attacker_weight, "defender": cfg.defender_weight}
    loss = 0.0
    for s in samples:
        seq = torch.tensor([s.prompt_ids + s.completion_ids])
        logits = model(input_ids=seq).logits[0].float()
        logp_all = torch.log_softmax(logits, -1)
        p = len(s.prompt_ids)
        pos = torch.arange(p - 1, p - 1 + len(s.completion_ids))
        logp = logp_all[pos, torch.tensor(s.completion_ids)]
        with torch.no_grad(), model.disable_adapter():
            ref_all = torch.log_softmax(model(input_ids=seq).logits[0].float(), -1)
        ref = ref_all[pos, torch.tensor(s.completion_ids)]
        ratio = torch.exp(logp - logp.detach())
        pg = -torch.minimum(ratio * s.advantage, torch.clamp(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * s.advantage)
        kl = torch.exp(ref - logp) - (ref - logp) - 1
        loss = loss + (weights[s.role] * (pg + cfg.kl_coef * kl) - s.sft_weight * logp).sum()
    return loss / total_tokens


def test_update_matches_direct_computation(tiny_cfg):
    model, tok = _live_adapter_policy(tiny_cfg)
    cfg = RLConfig(
        compute_dtype="float32",
        micro_batch_size=2,
        kl_coef=0.1,
        attacker_weight=0.5,
        learning_rate=1e-3,
        max_grad_norm=1e9,
    )
    samples = _samples()

    model.zero_grad()
    expected = _reference_loss(model, samples, cfg, tok.pad_token_id)
    expected.backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    captured = {}

    class Recorder(torch.optim.SGD):
        def step(self, closure=None):
            captured.update({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
            return super().step(closure)

    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    stats = grpo_update(model, Recorder(params, lr=1e-3), samples, cfg, tok.pad_token_id)
    assert stats.loss == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    assert stats.tokens == 17 and stats.samples == 3 and not stats.skipped
    for name, grad in expected_grads.items():
        torch.testing.assert_close(captured[name], grad, rtol=1e-4, atol=1e-6)
    assert any(not torch.equal(b, p) for b, p in zip(before, params))


def test_completion_logprobs_match_unpadded_full_logits(tiny_cfg):
    """Left padding with explicit positions gives each row exactly its unpadded log-probabilities."""
    model, tok = load_policy(tiny_cfg.model)
    samples = _samples()
    got = completion_logprobs(model, *collate(samples, tok.pad_token_id, torch.device("cpu")))
    want = []
    for s in samples:
        seq = torch.tensor([s.prompt_ids + s.completion_ids])
        logp = torch.log_softmax(model(input_ids=seq).logits[0].float(), -1)
        p = len(s.prompt_ids)
        want.append(logp[torch.arange(p - 1, p - 1 + len(s.completion_ids)), torch.tensor(s.completion_ids)])
    torch.testing.assert_close(got, torch.cat(want), rtol=1e-5, atol=1e-5)


def test_zero_advantage_samples_are_skipped(tiny_cfg):
    model, tok = load_policy(tiny_cfg.model)
    params = [p for p in model.parameters() if p.requires_grad]
    s = [TrainSample("defender", [5, 6, 7], [8, 9], advantage=0.0)]
    stats = grpo_update(model, torch.optim.AdamW(params), s, RLConfig(compute_dtype="float32"), tok.pad_token_id)
    assert stats.skipped and stats.samples == 0


@pytest.mark.parametrize("epochs", [1, 2])
def test_nonfinite_first_epoch_skips_the_step(tiny_cfg, epochs):
    """A non-finite first epoch applies nothing: skipped, 0 epochs, weights and optimizer state untouched."""
    model, tok = load_policy(tiny_cfg.model)
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params)
    s = [TrainSample("defender", [5, 6, 7], [8, 9], advantage=float("nan"))]
    stats = grpo_update(model, optimizer, s, RLConfig(compute_dtype="float32", epochs=epochs), tok.pad_token_id)
    assert stats.skipped and stats.epochs == 0 and not math.isfinite(stats.loss)
    assert all(torch.equal(b, p) for b, p in zip(before, params))
    assert not optimizer.state


def test_nonfinite_later_epoch_keeps_the_applied_epochs_and_says_so(tiny_cfg):
    """Epoch 1 is finite and applied; its huge step makes epoch 2's loss non-finite. The update stops there: not
    skipped, 1 epoch applied, the non-finite loss reported, and weights and optimizer state exactly those of a
    one-epoch update from the same start."""
    model, tok = _live_adapter_policy(tiny_cfg)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}

    def update(epochs):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(start[n])
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e30)
        cfg = RLConfig(compute_dtype="float32", epochs=epochs, kl_coef=0.0, micro_batch_size=2)
        stats = grpo_update(model, optimizer, _samples(), cfg, tok.pad_token_id)
        return stats, [p.detach().clone() for p in params], optimizer.state_dict()["state"]

    one, one_weights, one_state = update(epochs=1)
    two, two_weights, two_state = update(epochs=2)
    assert one.epochs == 1 and math.isfinite(one.loss) and not one.skipped
    assert two.epochs == 1 and not two.skipped and not math.isfinite(two.loss)
    assert all(torch.equal(a, b) for a, b in zip(one_weights, two_weights))
    assert two_state.keys() == one_state.keys()
    for k, state in one_state.items():
        assert all(torch.equal(v, two_state[k][name]) for name, v in state.items())


def test_multiple_epochs_use_fixed_behaviour_logprobs(tiny_cfg):
    """Epoch 2's ratio is π_now / π_behaviour with the log-probs taken before epoch 1's step, not π_now / π_now.

    Checked against a direct full-logit computation: at epoch 2's optimizer step the gradient and the reported loss
    equal those of the clipped objective whose denominator is the first-epoch policy (ratio ≠ 1 by then).
    """
    model, tok = _live_adapter_policy(tiny_cfg)
    cfg = RLConfig(compute_dtype="float32", epochs=2, kl_coef=0.0, micro_batch_size=2, clip_eps=0.2, max_grad_norm=1e9)
    samples = _samples()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total_tokens = sum(len(s.completion_ids) for s in samples)

    def per_sample_logps(s):
        seq = torch.tensor([s.prompt_ids + s.completion_ids])
        logp_all = torch.log_softmax(model(input_ids=seq).logits[0].float(), -1)
        p = len(s.prompt_ids)
        return logp_all[torch.arange(p - 1, p - 1 + len(s.completion_ids)), torch.tensor(s.completion_ids)]

    def objective(old):
        loss = 0.0
        for s, o in zip(samples, old):
            ratio = torch.exp(per_sample_logps(s) - o)
            pg = -torch.minimum(
                ratio * s.advantage, torch.clamp(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * s.advantage
            )
            weight = cfg.attacker_weight if s.role == "attacker" else cfg.defender_weight
            loss = loss + (weight * pg - s.sft_weight * per_sample_logps(s)).sum()
        return loss / total_tokens

    with torch.no_grad():
        behaviour = [per_sample_logps(s) for s in samples]
    seen = []

    class Recorder(torch.optim.SGD):
        def step(self, closure=None):
            if len(seen) == 1:  # epoch 2: compute what the gradient should be at these weights
                fixed = objective(behaviour)
                want = torch.autograd.grad(fixed, list(params.values()))
                with torch.no_grad():
                    fresh = objective([per_sample_logps(s).detach() for s in samples]).item()
                seen.append((fixed.item(), fresh, want, [p.grad.clone() for p in params.values()]))
            else:
                seen.append(None)
            return super().step(closure)

    stats = grpo_update(model, Recorder(list(params.values()), lr=2.0), samples, cfg, tok.pad_token_id)
    assert len(seen) == 2 and not stats.skipped and stats.epochs == 2
    fixed_loss, fresh_loss, want, got = seen[1]
    assert abs(fixed_loss - fresh_loss) > 1e-3  # epoch 1 moved the policy, so the two readings differ
    assert stats.loss == pytest.approx(fixed_loss, rel=1e-4, abs=1e-6)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def _tempered_logprobs(model, s: TrainSample, temperature: float) -> torch.Tensor:
    seq = torch.tensor([s.prompt_ids + s.completion_ids])
    logp = torch.log_softmax(model(input_ids=seq).logits[0].float() / temperature, -1)
    p = len(s.prompt_ids)
    return logp[torch.arange(p - 1, p - 1 + len(s.completion_ids)), torch.tensor(s.completion_ids)]


def test_completion_logprobs_at_the_sampling_temperature(tiny_cfg):
    """log_softmax(logits / T) per row, T ≠ 1, each row its own temperature."""
    model, tok = load_policy(tiny_cfg.model)
    samples = _samples()
    temps = [0.7, 1.6, 0.3]
    got = completion_logprobs(model, *collate(samples, tok.pad_token_id, torch.device("cpu")), torch.tensor(temps))
    want = torch.cat([_tempered_logprobs(model, s, t) for s, t in zip(samples, temps)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    plain = completion_logprobs(model, *collate(samples, tok.pad_token_id, torch.device("cpu")))
    assert not torch.allclose(got, plain)  # the temperature matters


def test_update_takes_loss_and_kl_at_each_samples_temperature(tiny_cfg):
    """SFT and KL terms at log_softmax(logits / T) of each sample's role; greedy (T = 0) counts as T = 1."""
    model, tok = _live_adapter_policy(tiny_cfg)
    samples = [replace(s, advantage=0.0, sft_weight=1.0, temperature=t) for s, t in zip(_samples(), (0.7, 0.0, 1.4))]
    cfg = RLConfig(compute_dtype="float32", micro_batch_size=2, kl_coef=0.1, learning_rate=1e-3)
    with torch.no_grad():
        logp = [_tempered_logprobs(model, s, t) for s, t in zip(samples, (0.7, 1.0, 1.4))]
        with model.disable_adapter():
            ref = [_tempered_logprobs(model, s, t) for s, t in zip(samples, (0.7, 1.0, 1.4))]
    kl = torch.cat([torch.exp(r - lp) - (r - lp) - 1 for r, lp in zip(ref, logp)])
    n = kl.numel()
    expected_loss = (cfg.kl_coef * kl.sum() - torch.cat(logp).sum()) / n
    params = [p for p in model.parameters() if p.requires_grad]
    stats = grpo_update(model, torch.optim.SGD(params, lr=1e-3), samples, cfg, tok.pad_token_id)
    assert stats.kl == pytest.approx((kl.sum() / n).item(), rel=1e-4, abs=1e-7)
    assert stats.loss == pytest.approx(expected_loss.item(), rel=1e-4, abs=1e-6)


def _update_and_grads(model, samples, cfg: RLConfig, pad_id: int, **kwargs):
    """(stats, gradients at the optimizer step) of one update with lr = 0, so the weights stay as they are."""
    grads = {}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    class Recorder(torch.optim.SGD):
        def step(self, closure=None):
            grads.update({n: p.grad.clone() for n, p in named})
            return super().step(closure)

    stats = grpo_update(model, Recorder([p for _, p in named], lr=0.0), samples, cfg, pad_id, **kwargs)
    return stats, grads


def test_filler_rows_add_no_loss_kl_or_gradient(tiny_cfg):
    """Zero-weight filler copies that even out data-parallel shards contribute nothing, KL included: a shard padded
    with fillers gives bitwise the loss, KL and gradients of the unpadded shard, with kl_coef > 0."""
    model, tok = _live_adapter_policy(tiny_cfg)
    cfg = RLConfig(compute_dtype="float32", micro_batch_size=2, kl_coef=0.1, max_grad_norm=1e9)
    samples = _samples()
    plain, plain_grads = _update_and_grads(model, samples, cfg, tok.pad_token_id)
    padded, padded_grads = _update_and_grads(
        model, samples, cfg, tok.pad_token_id, min_micro_batches=4, filler=samples[2]
    )
    assert not plain.skipped and plain.kl > 0
    fields = ("loss", "kl", "grad_norm", "tokens", "samples")
    assert [getattr(padded, f) for f in fields] == [getattr(plain, f) for f in fields]
    for name, grad in plain_grads.items():
        assert torch.equal(padded_grads[name], grad), name


def _per_sample_logps(model, s: TrainSample) -> torch.Tensor:
    seq = torch.tensor([s.prompt_ids + s.completion_ids])
    logp_all = torch.log_softmax(model(input_ids=seq).logits[0].float(), -1)
    p = len(s.prompt_ids)
    return logp_all[torch.arange(p - 1, p - 1 + len(s.completion_ids)), torch.tensor(s.completion_ids)]


# Three samples, prompts of 3 tokens; completions of 2, 4 and 1 tokens with advantages 1, −0.5 and 2. With
# kl_coef = 0 and one epoch (ratio 1) each token's loss is −A: row sums −2, +2, −2 over 7 tokens. Micro-batches of 2,
# length-sorted (4, 5, 7 tokens): [third, first] (3 tokens, sum −4) and [second] (4 tokens, sum +2).
HAND = [
    TrainSample("defender", [5, 6, 7], [8, 9], advantage=1.0),
    TrainSample("defender", [10, 11, 12], [13, 14, 15, 16], advantage=-0.5),
    TrainSample("defender", [17, 18, 19], [20], advantage=2.0),
]
HAND_BUDGET = 8  # dr_grpo's constant
# loss_type: (the loss worked out by hand, each sample's per-token weight in it)
HAND_LOSS = {
    "dapo": (-2 / 7, [1 / 7, 1 / 7, 1 / 7]),  # / 7 tokens
    "grpo": ((-2 / 2 + 2 / 4 - 2 / 1) / 3, [1 / 6, 1 / 12, 1 / 3]),  # mean of the 3 per-sample token means: −5/6
    "dr_grpo": (-2 / (3 * 8), [1 / 24, 1 / 24, 1 / 24]),  # / (3 samples × budget 8)
    "bnpo": ((-4 / 3 + 2 / 4) / 2, [1 / 6, 1 / 8, 1 / 6]),  # mean of the 2 micro-batch token means: −5/12
}


@pytest.mark.parametrize("loss_type", sorted(HAND_LOSS))
def test_loss_type_divides_as_documented(tiny_cfg, loss_type):
    """Each rl.loss_type's loss against the value worked out by hand, and its gradient against autograd of
    Σ_i w_i · Σ_t (−A_i · log π(token)) with the hand-derived per-token weights w_i."""
    model, tok = _live_adapter_policy(tiny_cfg)
    cfg = RLConfig(compute_dtype="float32", micro_batch_size=2, kl_coef=0.0, max_grad_norm=1e9, loss_type=loss_type)
    want_loss, weights = HAND_LOSS[loss_type]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    objective = sum(w * (-s.advantage * _per_sample_logps(model, s)).sum() for s, w in zip(HAND, weights))
    want_grads = dict(zip([n for n, _ in named], torch.autograd.grad(objective, [p for _, p in named])))
    totals = step_totals(HAND, cfg.micro_batch_size, completion_budget=HAND_BUDGET)
    stats, grads = _update_and_grads(model, HAND, cfg, tok.pad_token_id, totals=totals)
    assert stats.loss == pytest.approx(want_loss, rel=1e-6)
    assert stats.tokens == 7 and stats.samples == 3
    for name, grad in want_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6)


def test_default_loss_type_is_the_step_token_mean():
    assert RLConfig().loss_type == "dapo"


def test_dr_grpo_needs_a_completion_budget(tiny_cfg):
    model, tok = load_policy(tiny_cfg.model)
    cfg = RLConfig(compute_dtype="float32", loss_type="dr_grpo")
    params = [p for p in model.parameters() if p.requires_grad]
    with pytest.raises(ValueError, match="completion budget"):
        grpo_update(model, torch.optim.SGD(params, lr=0.0), HAND, cfg, tok.pad_token_id)


@pytest.mark.parametrize("loss_type", sorted(HAND_LOSS))
def test_zero_advantage_samples_add_no_kl_and_no_count(tiny_cfg, loss_type):
    """Flat-group samples are not trained under any loss type: adding one leaves the loss, the KL and the gradients
    bitwise as they were (kl_coef > 0), and changes no denominator."""
    model, tok = _live_adapter_policy(tiny_cfg)
    cfg = RLConfig(compute_dtype="float32", micro_batch_size=2, kl_coef=0.1, max_grad_norm=1e9, loss_type=loss_type)
    flat = TrainSample("attacker", [30, 31], [32, 33, 34], advantage=0.0)
    with_flat = [*_samples(), flat]
    totals = step_totals(with_flat, cfg.micro_batch_size, completion_budget=HAND_BUDGET)
    assert totals == step_totals(_samples(), cfg.micro_batch_size, completion_budget=HAND_BUDGET)
    plain, plain_grads = _update_and_grads(model, _samples(), cfg, tok.pad_token_id, totals=totals)
    flat_in, flat_grads = _update_and_grads(model, with_flat, cfg, tok.pad_token_id, totals=totals)
    assert plain.kl > 0 and (flat_in.loss, flat_in.kl, flat_in.samples) == (plain.loss, plain.kl, plain.samples)
    for name, grad in plain_grads.items():
        assert torch.equal(flat_grads[name], grad), name


@pytest.mark.parametrize("loss_type", sorted(HAND_LOSS))
def test_two_padded_shards_add_up_to_the_whole_step(tiny_cfg, loss_type):
    """Data parallelism by hand: two ranks' shards (the short one padded with a filler), each given the whole step's
    totals, sum to the single-process loss, KL and gradients (micro-batches of 1, so bnpo's batches match too)."""
    model, tok = _live_adapter_policy(tiny_cfg)
    cfg = RLConfig(compute_dtype="float32", micro_batch_size=1, kl_coef=0.1, max_grad_norm=1e9, loss_type=loss_type)
    samples = _samples()
    whole, whole_grads = _update_and_grads(
        model, samples, cfg, tok.pad_token_id, totals=step_totals(samples, 1, completion_budget=HAND_BUDGET)
    )
    totals = step_totals(samples, 1, world=2, completion_budget=HAND_BUDGET)
    ranks = [
        _update_and_grads(model, samples[r::2], cfg, tok.pad_token_id, totals=totals, min_micro_batches=2, filler=s)
        for r, s in ((0, samples[0]), (1, samples[0]))
    ]
    assert sum(stats.loss for stats, _ in ranks) == pytest.approx(whole.loss, rel=1e-6)
    assert sum(stats.kl for stats, _ in ranks) == pytest.approx(whole.kl, rel=1e-6)
    for name, grad in whole_grads.items():
        torch.testing.assert_close(ranks[0][1][name] + ranks[1][1][name], grad, rtol=1e-5, atol=1e-8)
