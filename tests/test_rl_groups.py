"""GRPO groups → training samples (ssp.rl.groups), on hand-set rewards."""

from __future__ import annotations

import math

import pytest

from ssp.rl.groups import Group, build_samples


def test_advantages_distillation_and_flat_groups_by_hand():
    defender = Group("defender", temperature=0.7)
    defender.add([1, 2], [10], 0.25)
    defender.add([1, 2], [11], 1.0)
    defender.distil([1, 2], [12])  # SFT only: not in the normalisation, no advantage
    attacker = Group("attacker", temperature=0.9)  # members of one goal may have different prompts (hints)
    for prompt, reward in (([3], 0.5), ([4], 0.0), ([5], 0.0), ([6], 0.0)):
        attacker.add(prompt, [20 + prompt[0]], reward)
    flat = Group("defender", temperature=0.7)
    flat.add([7], [30], 1.0)
    flat.add([7], [31], 1.0)
    single = Group("defender", temperature=0.7)
    single.add([8], [40], 0.25)
    unjudged = Group("defender", temperature=0.7)  # every plain answer invalid, one distilled refusal
    unjudged.distil([9], [50])

    samples, stats = build_samples([defender, attacker, flat, single, unjudged], adv_eps=0.0, sft_weight=0.3)
    by_completion = {tuple(s.completion_ids): s for s in samples}
    assert len(samples) == 2 + 1 + 4 + 2 + 1 + 1
    # [0.25, 1.0]: mean 0.625, sample std 0.75 / √2
    std = 0.75 / math.sqrt(2)
    assert by_completion[(10,)].advantage == pytest.approx(-0.375 / std)
    assert by_completion[(11,)].advantage == pytest.approx(0.375 / std)
    d = by_completion[(12,)]
    assert (d.advantage, d.sft_weight, d.prompt_ids, d.role, d.temperature) == (0.0, 0.3, [1, 2], "defender", 0.7)
    # [0.5, 0, 0, 0]: mean 0.125, sample std 0.25
    assert by_completion[(23,)].advantage == pytest.approx(1.5)
    assert [by_completion[(c,)].advantage for c in (24, 25, 26)] == pytest.approx([-0.5] * 3)
    assert {by_completion[(c,)].temperature for c in (23, 24, 25, 26)} == {0.9}
    assert by_completion[(24,)].prompt_ids == [4]
    assert by_completion[(30,)].advantage == 0.0 and by_completion[(31,)].advantage == 0.0
    assert by_completion[(40,)].advantage == 0.0
    assert by_completion[(50,)].sft_weight == 0.3
    # counted: defender, attacker, flat, single (4 groups with rewards); flat: the last two
    assert (stats.groups, stats.flat, stats.flat_share) == (4, 2, 0.5)


def test_no_groups():
    samples, stats = build_samples([], adv_eps=1e-4, sft_weight=0.1)
    assert samples == [] and stats.groups == 0 and math.isnan(stats.flat_share)


def test_member_sft_weight_adds_to_its_advantage_and_trains_a_flat_group():
    mixed = Group("defender", temperature=0.7)
    mixed.add([1], [10], 1.0, sft_weight=0.5)  # helpful: anchored
    mixed.add([1], [11], 0.0)  # a refusal of a benign prompt
    flat = Group("defender", temperature=0.7)
    flat.add([2], [20], 1.0, sft_weight=0.5)
    flat.add([2], [21], 1.0, sft_weight=0.5)
    samples, stats = build_samples([mixed, flat], adv_eps=0.0, sft_weight=0.3)
    by_completion = {tuple(s.completion_ids): s for s in samples}
    # [1, 0]: mean 0.5, sample std 1 / √2; the anchor keeps its advantage and adds SFT, the other gets none
    assert (
        by_completion[(10,)].advantage == pytest.approx(0.5 * math.sqrt(2)) and by_completion[(10,)].sft_weight == 0.5
    )
    assert by_completion[(11,)].advantage == pytest.approx(-0.5 * math.sqrt(2)) and by_completion[(11,)].sft_weight == 0
    # the flat group has no advantage, but its anchored answers still train through the SFT term
    assert [(by_completion[(c,)].advantage, by_completion[(c,)].sft_weight) for c in (20, 21)] == [(0.0, 0.5)] * 2
    assert (stats.groups, stats.flat) == (2, 1)
