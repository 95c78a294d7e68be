"""One step of the Safety Self-Play game: attack, defend, replay, judge, reward.

Produces the training samples (both roles, GRPO groups already normalised), the exchanges to log,
the Defender failures to admit into the experience pool and the fresh rewards of replayed entries.
Outcomes and rewards follow `ssp.game.rewards`; groups and advantages are built by `ssp.rl.groups`.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ssp.config import SSPConfig
from ssp.game.prompts import StrategyHint, attacker_request, defender_request, parse_attack, reflective_request
from ssp.game.rewards import (
    Outcome,
    OutcomeTally,
    ScoredAnswer,
    accepts_reflection,
    score_attack_answer,
    score_benign_answer,
)
from ssp.game.seeds import Seed, draw_benign, split_borderline
from ssp.game.templates import load_templates
from ssp.judges.base import Judge, JudgeInput, Verdict
from ssp.replay.pool import Candidate, PoolEntry
from ssp.rl.groups import Group, build_samples
from ssp.rl.grpo import TrainSample
from ssp.rollout.base import ChatRequest, Completion


@dataclass
class Exchange:
    """One Defender answer with everything needed to audit it (written to exchanges.jsonl)."""

    step: int
    kind: str  # "attack" | "replay" | "reflect" | "benign"
    goal: str
    category: str
    prompt: str
    response: str
    outcome: str
    verdict: dict[str, Any] | None
    r_def: float | None  # the reward trained on; None: invalid verdict, a reflective answer, an off-goal attack
    r_att: float | None = None
    hint: str | None = None
    entry_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StepResult:
    samples: list[TrainSample]
    exchanges: list[Exchange]
    candidates: list[Candidate]
    replay_rewards: dict[int, list[float]]
    metrics: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)
    generated_tokens: int = 0


@dataclass
class _Attack:
    goal: Seed
    hint: StrategyHint | None
    completion: Completion | None  # None for a static (template) attack: nothing to train
    text: str | None
    gate_passed: bool = True


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _trains_defender(kind: str, obj: Any) -> bool:
    """Whether the Defender's plain answers to this prompt are trained by their reward: not reflective answers
    (SFT targets at most), not answers to an attack that failed the intent gate."""
    return kind != "reflect" and (kind != "attack" or obj.gate_passed)


class SelfPlayGame:
    def __init__(
        self,
        cfg: SSPConfig,
        engine,
        judge: Judge,
        harmful: list[Seed],
        benign: list[Seed],
        hints: list[StrategyHint],
        embedder=None,
        borderline: list[Seed] | None = None,
    ):
        """`benign` is the whole plain pool; `borderline` the part of it that game.borderline_share draws from."""
        if cfg.game.intent_gate and embedder is None:
            raise ValueError("game.intent_gate needs a text embedder")
        self.cfg = cfg
        self.engine = engine
        self.judge = judge
        self.harmful = harmful
        self.benign = benign
        self.edgy, self.plain = split_borderline(benign, borderline or [])
        self.hints = hints
        self.embedder = embedder
        self.templates = []
        if cfg.game.attacker == "static":
            self.templates = load_templates(cfg.game.static_templates)
            if cfg.game.static_template_names:
                unknown = set(cfg.game.static_template_names) - {t.name for t in self.templates}
                if unknown:
                    raise ValueError(f"game.static_template_names: unknown templates {sorted(unknown)}")
                self.templates = [t for t in self.templates if t.name in cfg.game.static_template_names]

    # -- phases -------------------------------------------------------------------------------
    def _attack(self, goals: list[Seed], rng: random.Random) -> list[_Attack]:
        g = self.cfg.game
        if g.attacker == "static":
            return [
                _Attack(goal, None, None, rng.choice(self.templates).apply(goal.text))
                for goal in goals
                for _ in range(g.attacks_per_goal)
            ]
        plan = [
            (goal, rng.choice(self.hints) if g.strategy_hints and self.hints else None)
            for goal in goals
            for _ in range(g.attacks_per_goal)
        ]
        if not plan:
            return []
        outs = self.engine.generate(
            [attacker_request(goal.text, hint) for goal, hint in plan], self.cfg.rollout.attacker, n=1
        )
        attacks = [
            _Attack(goal, hint, out[0], parse_attack(out[0].text, out[0].finished, g.accept_truncated_attacks))
            for (goal, hint), out in zip(plan, outs)
        ]
        parsed = [a for a in attacks if a.text is not None]
        if g.intent_gate and parsed:
            sims = self.embedder.similarity([a.text for a in parsed], [a.goal.text for a in parsed])
            for a, sim in zip(parsed, sims):
                a.gate_passed = sim >= g.intent_threshold
        return attacks

    def play(self, step: int, replay: list[PoolEntry], rng: random.Random) -> StepResult:
        g, r = self.cfg.game, self.cfg.replay
        timings: dict[str, float] = {}
        goals = rng.sample(self.harmful, min(g.goals_per_step, len(self.harmful)))
        benign = draw_benign(self.benign, self.edgy, self.plain, g.benign_per_step, g.borderline_share, rng)

        t0 = time.perf_counter()
        attacks = self._attack(goals, rng)
        timings["attacker_generation"] = time.perf_counter() - t0

        # Defender requests: every parsed attack, every replayed entry, every benign seed (M answers each),
        # plus reflective re-answers of replayed failures. One batched generation for all of them.
        M = g.answers_per_prompt
        jobs: list[tuple[str, Any, ChatRequest]] = []
        jobs += [("attack", a, defender_request(a.text)) for a in attacks if a.text is not None for _ in range(M)]
        jobs += [("replay", e, defender_request(e.attack)) for e in replay for _ in range(M)]
        if r.reflect:
            for e in replay:
                jobs += [
                    ("reflect", e, reflective_request(e.attack, e.goal, e.rationale, rng))
                    for _ in range(r.reflect_samples)
                ]
        jobs += [("benign", s, defender_request(s.text)) for s in benign for _ in range(M)]
        t0 = time.perf_counter()
        answers = (
            [o[0] for o in self.engine.generate([j[2] for j in jobs], self.cfg.rollout.defender, n=1)] if jobs else []
        )
        timings["defender_generation"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        items = []
        for (kind, obj, _), ans in zip(jobs, answers):
            if kind == "attack":
                items.append(JudgeInput(obj.goal.text, obj.text, ans.text))
            elif kind in ("replay", "reflect"):
                items.append(JudgeInput(obj.goal, obj.attack, ans.text))
            else:
                items.append(JudgeInput(obj.text, obj.text, ans.text))
        verdicts = self.judge.judge(items) if items else []
        timings["judging"] = time.perf_counter() - t0

        result = self._score(step, attacks, jobs, answers, verdicts, replay)
        result.timings = timings
        result.generated_tokens = sum(len(a.completion.completion_ids) for a in attacks if a.completion) + sum(
            len(a.completion_ids) for a in answers
        )
        return result

    # -- outcomes, rewards, groups, pool candidates ---------------------------------------------
    def _score(self, step, attacks, jobs, answers, verdicts: list[Verdict], replay) -> StepResult:
        """Outcomes and rewards by the game's rules (`ssp.game.rewards`); advantages by `ssp.rl.groups`.

        Answers to an attack that failed the intent gate join no Defender group: the attack no longer
        pursues its harmful goal, so refusing it must not be taught (nor helping it: it may still be harmful).
        """
        g, ro = self.cfg.game, self.cfg.rollout
        encode = self.engine.encoder.encode
        tally = OutcomeTally()
        exchanges: list[Exchange] = []
        candidates: list[Candidate] = []

        # Each answer's outcome and rewards, per prompt answered (object identity of the attack/entry/seed).
        by_prompt: dict[tuple[str, int], list[tuple[Completion, Verdict, ScoredAnswer]]] = {}
        owners: dict[tuple[str, int], Any] = {}
        for (kind, obj, _req), ans, verdict in zip(jobs, answers, verdicts):
            scored = (score_benign_answer if kind == "benign" else score_attack_answer)(verdict, g.rewards)
            tally.add_answer(kind, scored.outcome)
            owners[(kind, id(obj))] = obj
            by_prompt.setdefault((kind, id(obj)), []).append((ans, verdict, scored))
            goal = obj.goal.text if kind == "attack" else (obj.goal if kind in ("replay", "reflect") else obj.text)
            exchanges.append(
                Exchange(
                    step=step,
                    kind=kind,
                    goal=goal,
                    category=(obj.goal.category if kind == "attack" else getattr(obj, "category", "")) or "",
                    prompt=obj.text if kind in ("attack", "benign") else obj.attack,
                    response=ans.text,
                    outcome=scored.outcome.value,
                    verdict=verdict.to_dict(),
                    r_def=scored.r_def if _trains_defender(kind, obj) else None,
                    r_att=scored.r_att,
                    hint=obj.hint.name if kind == "attack" and obj.hint else None,
                    entry_id=obj.id if kind in ("replay", "reflect") else None,
                )
            )

        # Defender groups (plain context); a replay group carries its accepted reflective answers as SFT targets.
        groups: list[Group] = []
        def_rewards: dict[str, list[float]] = {"attack": [], "replay": [], "benign": []}
        replay_rewards: dict[int, list[float]] = {}
        reflect_accepted = helpful_anchored = 0
        for key, members in by_prompt.items():
            kind, obj = key[0], owners[key]
            if not _trains_defender(kind, obj):
                continue
            prompt_ids = encode(defender_request(obj.attack if kind == "replay" else obj.text))[0]
            group = Group("defender", ro.defender.temperature)
            for ans, _v, scored in members:
                if scored.r_def is not None:
                    anchored = scored.outcome is Outcome.BENIGN_HELPED and self.cfg.rl.helpful_sft_weight > 0
                    helpful_anchored += anchored
                    group.add(prompt_ids, ans.completion_ids, scored.r_def, self.cfg.rl.helpful_sft_weight * anchored)
            def_rewards[kind] += group.rewards
            if kind == "replay":
                replay_rewards[obj.id] = list(group.rewards)
                for ans, verdict, _s in by_prompt.get(("reflect", key[1]), []):
                    if accepts_reflection(verdict):
                        group.distil(prompt_ids, ans.completion_ids)
                        reflect_accepted += 1
            groups.append(group)

        # Attacker: reward per attack = mean r_att over its judged Defender answers; 0 if unparsed or off goal.
        attack_rewards: list[float] = []
        by_goal: dict[int, Group] = {}
        for a in attacks:
            if a.text is None:
                reward = 0.0
                tally.add_attack(Outcome.ATTACK_UNPARSED)
            else:
                # (answer, verdict, r_att, r_def) of the validly judged answers: a valid verdict gives both rewards.
                valid = [
                    (ans, v, sc.r_att, sc.r_def)
                    for ans, v, sc in by_prompt.get(("attack", id(a)), [])
                    if sc.r_att is not None and sc.r_def is not None
                ]
                if not valid:
                    continue  # unjudged: never train on it
                if not a.gate_passed:
                    reward = 0.0
                    tally.add_attack(Outcome.ATTACK_OFF_GOAL)
                else:
                    reward = _mean([r_att for _a, _v, r_att, _d in valid])
                    mean_def = _mean([r_def for _a, _v, _r, r_def in valid])
                    if mean_def < self.cfg.replay.admit_below:
                        candidates.append(self._candidate(a.goal.text, a.text, valid, mean_def))
            attack_rewards.append(reward)
            if a.completion is not None:  # static attacks: the Attacker does not learn
                group = by_goal.setdefault(id(a.goal), Group("attacker", ro.attacker.temperature))
                group.add(encode(attacker_request(a.goal.text, a.hint))[0], a.completion.completion_ids, reward)
        groups += by_goal.values()

        samples, group_stats = build_samples(groups, self.cfg.rl.adv_eps, self.cfg.rl.reflect_sft_weight)
        metrics = {
            "reward/attacker": _mean(attack_rewards),
            "reward/defender": _mean([r for rs in def_rewards.values() for r in rs]),
            "reward/defender_attack": _mean(def_rewards["attack"]),
            "reward/defender_replay": _mean(def_rewards["replay"]),
            "reward/defender_benign": _mean(def_rewards["benign"]),
            "train_asr": tally.rate("attack", Outcome.JAILBROKEN),
            "train_refusal": tally.rate("attack", Outcome.REFUSED),
            "train_derailed": tally.rate("attack", Outcome.DERAILED),
            "replay_asr": tally.rate("replay", Outcome.JAILBROKEN),
            "benign_refusal": tally.rate("benign", Outcome.BENIGN_REFUSED),
            "benign_derailed": tally.rate("benign", Outcome.BENIGN_DERAILED),
            "attack_parse_rate": _mean([float(a.text is not None) for a in attacks]),
            "intent_gate_pass": _mean([float(a.gate_passed) for a in attacks if a.text is not None]),
            "reflect_accepted": float(reflect_accepted),
            "helpful_anchored": float(helpful_anchored),
            "judge_invalid": float(sum(not v.valid for v in verdicts)),
            "judged": float(len(verdicts)),
            "flat_group_share": group_stats.flat_share,
            "samples/attacker": float(sum(s.role == "attacker" for s in samples)),
            "samples/defender": float(sum(s.role == "defender" for s in samples)),
            **tally.counts(),
        }
        return StepResult(samples, exchanges, candidates, replay_rewards, metrics)

    @staticmethod
    def _candidate(
        goal: str, attack: str, valid: list[tuple[Completion, Verdict, float, float]], mean_def: float
    ) -> Candidate:
        """A pool candidate from an attack the Defender failed: its failing answers, the worst rationale."""
        worst = max(valid, key=lambda m: m[1].score)
        return Candidate(
            goal=goal,
            attack=attack,
            responses=[ans.text for ans, _v, _r, r_def in valid if r_def < 0.5] or [worst[0].text],
            score=_mean([v.score for _a, v, _r, _d in valid]),
            rationale=worst[1].rationale,
            mean_reward=mean_def,
        )
