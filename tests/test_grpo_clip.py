"""The clipped policy-gradient term at ratios ≠ 1, against values worked out by hand (PPO's min(r·A, clip(r)·A))."""

import math

import pytest
import torch

from ssp.rl.grpo import token_loss_terms


def test_clipped_objective_values_and_gradients_away_from_ratio_one():
    # ratio r = exp(logp − old): 1.5, 1.5, 0.5, 0.5, 1.1 with ε = 0.2, i.e. clip range [0.8, 1.2].
    ratios = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1])
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0])
    old = torch.tensor([-2.0, -1.0, -3.0, -0.5, -1.5])
    logp = (old + torch.log(ratios)).requires_grad_(True)
    loss, kl = token_loss_terms(
        logp,
        old,
        None,
        advantages=advantages,
        role_weights=torch.ones(5),
        sft_weights=torch.zeros(5),
        clip_eps=0.2,
        kl_coef=0.0,
    )
    # −min(r·A, clip(r)·A) by hand:
    #   r=1.5, A=+1: min(1.5, 1.2) = 1.2  → −1.2 (gain capped: clipped)
    #   r=1.5, A=−1: min(−1.5, −1.2) = −1.5 → +1.5 (pessimistic side: not clipped)
    #   r=0.5, A=+1: min(0.5, 0.8) = 0.5  → −0.5 (not clipped)
    #   r=0.5, A=−1: min(−0.5, −0.8) = −0.8 → +0.8 (clipped)
    #   r=1.1, A=+2: inside the range     → −2.2
    torch.testing.assert_close(loss, torch.tensor([-1.2, 1.5, -0.5, 0.8, -2.2]), rtol=1e-6, atol=1e-6)
    assert torch.count_nonzero(kl) == 0
    # d/dlogp of −r·A is −r·A where the unclipped term is the minimum, 0 where the clipped constant is.
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([0.0, 1.5, -0.5, 0.0, -2.2]), rtol=1e-6, atol=1e-6)


def test_role_weight_and_kl_scale_the_clipped_term():
    """Weights multiply the clipped term and the k3 KL (e^d − d − 1, d = ref − logp), the SFT term is −w·logp."""
    old = torch.tensor([-1.0])
    logp = old + math.log(1.5)
    ref = torch.tensor([-1.2])
    loss, kl = token_loss_terms(
        logp,
        old,
        ref,
        advantages=torch.tensor([1.0]),
        role_weights=torch.tensor([0.5]),
        sft_weights=torch.tensor([0.1]),
        clip_eps=0.2,
        kl_coef=0.3,
    )
    d = -1.2 - float(logp)
    want_kl = math.exp(d) - d - 1
    assert float(kl) == pytest.approx(want_kl, rel=1e-6)
    assert float(loss) == pytest.approx(0.5 * (-1.2 + 0.3 * want_kl) - 0.1 * float(logp), rel=1e-6)
