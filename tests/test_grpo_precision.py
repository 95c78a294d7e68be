"""bf16 autocast updates agree with float32 ones: same loss within 1%, every sample's gradient points the same way."""

import copy

import torch

from ssp.config import RLConfig
from ssp.models.loader import load_policy
from ssp.rl.grpo import TrainSample, grpo_update

ADVANTAGES = [1.0, 0.5, -0.3, 1.2, -0.8, 0.9]  # as group normalisation gives them; one distilled (SFT) sample


def _samples(vocab: int, n: int = 6) -> list[TrainSample]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        prompt = torch.randint(3, vocab, (int(torch.randint(5, 12, (1,), generator=g)),), generator=g).tolist()
        completion = torch.randint(3, vocab, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        out.append(
            TrainSample(
                "defender" if i % 2 else "attacker",
                prompt,
                completion,
                advantage=ADVANTAGES[i % len(ADVANTAGES)],
                sft_weight=0.5 if i == 1 else 0.0,
            )
        )
    return out


def _update(model, samples, dtype: str) -> tuple[float, torch.Tensor]:
    """(loss, flattened parameter change) of one plain-SGD update; the change is −lr × gradient."""
    model = copy.deepcopy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    before = torch.cat([p.detach().flatten().clone() for p in params])
    cfg = RLConfig(compute_dtype=dtype, kl_coef=0.02, micro_batch_size=4, max_grad_norm=1e9)
    stats = grpo_update(model, torch.optim.SGD(params, lr=1e-3), samples, cfg, pad_id=0)
    assert not stats.skipped
    return stats.loss, torch.cat([p.detach().flatten() for p in params]) - before


def test_bf16_update_matches_float32(tiny_cfg, one_torch_thread):
    model, _tok = load_policy(tiny_cfg.model)
    with torch.no_grad():  # an adapter that is not zero, so the KL term and LoRA A gradients are live
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    samples = _samples(model.config.vocab_size)
    loss32, step32 = _update(model, samples, "float32")
    loss16, step16 = _update(model, samples, "bfloat16")
    assert abs(loss16 - loss32) <= 0.01 * abs(loss32)
    assert torch.nn.functional.cosine_similarity(step16, step32, dim=0) > 0.99
    for sample in samples:  # each advantage-weighted gradient on its own
        _, s32 = _update(model, [sample], "float32")
        _, s16 = _update(model, [sample], "bfloat16")
        assert torch.dot(s16, s32) > 0
        assert torch.nn.functional.cosine_similarity(s16, s32, dim=0) > 0.95


def test_autocast_runs_the_matmuls_in_bf16(tiny_cfg):
    """The setting is real: under bfloat16 the forward's linear layers see bf16 inputs."""
    model, _tok = load_policy(tiny_cfg.model)
    seen = []
    handle = (
        model.get_base_model()
        .model.layers[0]
        .mlp.down_proj.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].dtype))
    )
    samples = _samples(model.config.vocab_size, n=2)
    for dtype in ("bfloat16", "float32"):
        grpo_update(
            model,
            torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0),
            samples,
            RLConfig(compute_dtype=dtype, kl_coef=0.0),
            pad_id=0,
        )
    handle.remove()
    assert torch.bfloat16 in seen and torch.float32 in seen
    assert all(p.dtype == torch.float32 for p in model.parameters())
