"""GRPO groups → training samples: group-relative advantages, and context-distilled SFT targets.

A group is what one role sampled for one prompt (the Defender: M answers to one attack, replayed entry
or benign prompt; the Attacker: K attacks on one goal, whose hints may differ) with the reward of each.
Advantages are normalised inside the group (`group_advantages`); a flat group (one member, or all
rewards equal) carries no policy-gradient signal.

A member may also carry an SFT weight of its own (`rl.helpful_sft_weight` on the Defender's helpful answers
to benign prompts): it was sampled in the plain context it is trained in, so it keeps its advantage and the
SFT term is added to it; a flat group of such answers still trains through the SFT term.

Distilled completions — safe full refusals the Defender wrote in the reflective context for a replayed
attack (DESIGN.md §6) — are trained in the plain context as SFT targets only: advantage 0, weight
`rl.reflect_sft_weight`. They were sampled in another context, so they get no policy-gradient term (its
ratio would need the reflective context's probability as the behaviour policy, which the plain-context
log-probs are not) and do not join the group's advantage normalisation (they would shift the plain
answers' baseline).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ssp.rl.grpo import TrainSample, group_advantages


@dataclass
class Group:
    role: str  # "attacker" | "defender"
    temperature: float  # the role's sampling temperature: the update's log-probs use it
    prompts: list[list[int]] = field(default_factory=list)
    completions: list[list[int]] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    sft_weights: list[float] = field(default_factory=list)  # per member: an SFT term on top of its advantage
    distilled: list[tuple[list[int], list[int]]] = field(default_factory=list)  # (prompt_ids, completion_ids)

    def add(self, prompt_ids: list[int], completion_ids: list[int], reward: float, sft_weight: float = 0.0) -> None:
        self.prompts.append(prompt_ids)
        self.completions.append(completion_ids)
        self.rewards.append(reward)
        self.sft_weights.append(sft_weight)

    def distil(self, prompt_ids: list[int], completion_ids: list[int]) -> None:
        self.distilled.append((prompt_ids, completion_ids))


@dataclass
class GroupStats:
    groups: int = 0  # groups with at least one rewarded member
    flat: int = 0  # ... of which every advantage is zero

    @property
    def flat_share(self) -> float:
        return self.flat / self.groups if self.groups else float("nan")


def build_samples(groups: list[Group], adv_eps: float, sft_weight: float) -> tuple[list[TrainSample], GroupStats]:
    """One TrainSample per rewarded member (its group-relative advantage) and per distilled completion."""
    samples: list[TrainSample] = []
    stats = GroupStats()
    for g in groups:
        if g.rewards:
            advantages = group_advantages(g.rewards, adv_eps)
            stats.groups += 1
            stats.flat += all(a == 0.0 for a in advantages)
            samples += [
                TrainSample(g.role, p, c, adv, sft_weight=w, temperature=g.temperature)
                for p, c, adv, w in zip(g.prompts, g.completions, advantages, g.sft_weights)
            ]
        samples += [
            TrainSample(g.role, p, c, 0.0, sft_weight=sft_weight, temperature=g.temperature) for p, c in g.distilled
        ]
    return samples, stats
