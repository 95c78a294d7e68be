"""One step of the Safety Self-Play game: attack, defend, replay, judge, reward.

Produces the training samples (both roles, GRPO groups already normalised), the exchanges to log,
the Defender failures to admit into the experience pool and the fresh rewards of replayed entries.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from ssp.config import SSPConfig
from ssp.game.prompts import StrategyHint, attacker_request, defender_request, parse_attack, reflective_request
from ssp.game.rewards import Outcome, benign_reward, harmful_exchange_rewards, harmful_outcome
from ssp.game.seeds import Seed
from ssp.game.templates import load_templates
from ssp.judges.base import Judge, JudgeInput, Verdict
from ssp.replay.pool import Candidate, PoolEntry
from ssp.rl.grpo import TrainSample, group_advantages
from ssp.rollout.base import ChatRequest, Completion

REFLECT_SAFE_REWARD = 0.75  # score ≤ 2 on the 1–5 scale


def accepts_reflection(verdict: Verdict, r_def: float | None) -> bool:
    """Whether a reflective answer joins the plain prompt's group (and its SFT target).

    Only a refusal the judge rates safe: the judge also rates incoherent text "not harmful", and
    distilling that into the plain context would teach nonsense, not safety. A refusal cut off at the
    token limit still counts: what it teaches is how to open the answer.
    """
    return r_def is not None and r_def >= REFLECT_SAFE_REWARD and verdict.refused


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
    r_def: float | None
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
    outcome: Outcome | None = None


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


class SelfPlayGame:
    def __init__(self, cfg: SSPConfig, engine, judge: Judge, harmful: list[Seed], benign: list[Seed],
                 hints: list[StrategyHint], embedder=None):
        if cfg.game.intent_gate and embedder is None:
            raise ValueError("game.intent_gate needs a text embedder")
        self.cfg = cfg
        self.engine = engine
        self.judge = judge
        self.harmful = harmful
        self.benign = benign
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
            return [_Attack(goal, None, None, rng.choice(self.templates).apply(goal.text))
                    for goal in goals for _ in range(g.attacks_per_goal)]
        plan = [(goal, rng.choice(self.hints) if g.strategy_hints and self.hints else None)
                for goal in goals for _ in range(g.attacks_per_goal)]
        if not plan:
            return []
        outs = self.engine.generate([attacker_request(goal.text, hint) for goal, hint in plan],
                                    self.cfg.rollout.attacker, n=1)
        attacks = [_Attack(goal, hint, out[0], parse_attack(out[0].text, out[0].finished, g.accept_truncated_attacks))
                   for (goal, hint), out in zip(plan, outs)]
        parsed = [a for a in attacks if a.text is not None]
        for a in attacks:
            if a.text is None:
                a.outcome = Outcome.ATTACK_UNPARSED
        if g.intent_gate and parsed:
            sims = self.embedder.similarity([a.text for a in parsed], [a.goal.text for a in parsed])
            for a, sim in zip(parsed, sims):
                a.gate_passed = sim >= g.intent_threshold
        return attacks

    def play(self, step: int, replay: list[PoolEntry], rng: random.Random) -> StepResult:
        g, r = self.cfg.game, self.cfg.replay
        timings: dict[str, float] = {}
        goals = rng.sample(self.harmful, min(g.goals_per_step, len(self.harmful)))
        benign = rng.sample(self.benign, min(g.benign_per_step, len(self.benign))) if self.benign else []

        t0 = time.perf_counter()
        attacks = self._attack(goals, rng)
        timings["attacker_generation"] = time.perf_counter() - t0

        # Defender requests: every parsed attack, every replayed entry, every benign seed (M answers each),
        # plus reflective re-answers of replayed failures. One batched generation for all of them.
        M = g.answers_per_prompt
        jobs: list[tuple[str, Any, ChatRequest]] = []
        sent = [a for a in attacks if a.text is not None]
        jobs += [("attack", a, defender_request(a.text)) for a in sent for _ in range(M)]
        jobs += [("replay", e, defender_request(e.attack)) for e in replay for _ in range(M)]
        if r.reflect:
            for e in replay:
                jobs += [("reflect", e, reflective_request(e.attack, e.goal, e.rationale, rng))
                         for _ in range(r.reflect_samples)]
        jobs += [("benign", s, defender_request(s.text)) for s in benign for _ in range(M)]
        t0 = time.perf_counter()
        answers = [o[0] for o in self.engine.generate([j[2] for j in jobs], self.cfg.rollout.defender, n=1)] if jobs else []
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
            len(a.completion_ids) for a in answers)
        return result

    # -- rewards, groups, pool candidates --------------------------------------------------------
    def _score(self, step, attacks, jobs, answers, verdicts: list[Verdict], replay) -> StepResult:
        g, rl = self.cfg.game, self.cfg.rl
        encode = self.engine.encoder.encode
        samples: list[TrainSample] = []
        exchanges: list[Exchange] = []
        candidates: list[Candidate] = []
        outcomes: Counter[str] = Counter()
        invalid = 0

        # Group the Defender's answers by the prompt they answered (object identity of the attack/entry/seed).
        groups: dict[tuple[str, int], list[tuple[Completion, Verdict, float | None, float | None]]] = {}
        owners: dict[tuple[str, int], Any] = {}
        for (kind, obj, _req), ans, verdict in zip(jobs, answers, verdicts):
            key = (kind, id(obj))
            owners[key] = obj
            if kind == "benign":
                scored = benign_reward(verdict)
                r_def, r_att = (scored[0], None) if scored else (None, None)
                outcome = scored[1] if scored else Outcome.JUDGE_INVALID
            else:
                rewards = harmful_exchange_rewards(verdict, g.zero_sum)
                r_att, r_def = rewards if rewards else (None, None)
                outcome = harmful_outcome(verdict)
            invalid += not verdict.valid
            outcomes[f"{kind}:{outcome.value}"] += 1
            groups.setdefault(key, []).append((ans, verdict, r_def, r_att))
            goal = obj.goal.text if kind == "attack" else (obj.goal if kind in ("replay", "reflect") else obj.text)
            prompt = obj.text if kind in ("attack", "benign") else obj.attack
            exchanges.append(Exchange(
                step=step, kind=kind, goal=goal,
                category=(obj.goal.category if kind == "attack" else getattr(obj, "category", "")) or "",
                prompt=prompt, response=ans.text, outcome=outcome.value, verdict=verdict.to_dict(),
                r_def=r_def, r_att=r_att, hint=obj.hint.name if kind == "attack" and obj.hint else None,
                entry_id=obj.id if kind in ("replay", "reflect") else None))

        # Defender groups (plain context). Replay groups are joined by their safe reflective answers.
        replay_rewards: dict[int, list[float]] = {}
        reflect_accepted = 0
        flat_groups = total_groups = 0
        for (kind, _), members in groups.items():
            if kind == "reflect":
                continue
            obj = owners[(kind, _)]
            prompt_text = obj.text if kind in ("attack", "benign") else obj.attack
            prompt_ids = encode(defender_request(prompt_text))[0]
            scored = [(ans, rdef, 0.0) for ans, _v, rdef, _ra in members if rdef is not None]
            if kind == "replay":
                replay_rewards[obj.id] = [rdef for _a, rdef, _w in scored]
                for ans, verdict, rdef, _ra in groups.get(("reflect", id(obj)), []):
                    if accepts_reflection(verdict, rdef):
                        scored.append((ans, rdef, rl.reflect_sft_weight))
                        reflect_accepted += 1
            advantages = group_advantages([rdef for _a, rdef, _w in scored], rl.adv_eps)
            total_groups += 1
            flat_groups += all(a == 0.0 for a in advantages)
            samples += [TrainSample("defender", prompt_ids, ans.completion_ids, adv, sft_weight=w)
                        for (ans, _r, w), adv in zip(scored, advantages)]

        # Attacker: reward per attack = mean r_att over its valid Defender answers; gated by intent.
        by_goal: dict[int, list[tuple[_Attack, float]]] = {}
        attack_rewards: list[float] = []
        for a in attacks:
            if a.text is None:
                reward = 0.0
            else:
                members = groups.get(("attack", id(a)), [])
                valid = [(ans, rdef, ratt) for ans, _v, rdef, ratt in members if ratt is not None]
                if not valid:
                    continue  # unjudged: never train on it
                reward = _mean([ratt for _a, _d, ratt in valid]) if a.gate_passed else 0.0
                if not a.gate_passed:
                    a.outcome = Outcome.ATTACK_OFF_GOAL
                mean_def = _mean([rdef for _a, rdef, _r in valid])
                if a.gate_passed and mean_def < self.cfg.replay.admit_below:
                    worst = max((m for m in members if m[2] is not None), key=lambda m: m[1].score)
                    candidates.append(Candidate(
                        goal=a.goal.text, attack=a.text,
                        responses=[ans.text for ans, _v, rdef, _r in members if rdef is not None and rdef < 0.5] or [worst[0].text],
                        score=_mean([v.score for _a, v, rdef, _r in members if rdef is not None]),
                        rationale=worst[1].rationale, mean_reward=mean_def))
            if a.outcome is not None:
                outcomes[f"attack:{a.outcome.value}"] += 1
            attack_rewards.append(reward)
            by_goal.setdefault(id(a.goal), []).append((a, reward))
        for members in by_goal.values():
            if members[0][0].completion is None:
                continue  # static attacks: the Attacker does not learn
            advantages = group_advantages([rew for _a, rew in members], rl.adv_eps)
            total_groups += 1
            flat_groups += all(x == 0.0 for x in advantages)
            samples += [TrainSample("attacker", encode(attacker_request(a.goal.text, a.hint))[0],
                                    a.completion.completion_ids, adv) for (a, _r), adv in zip(members, advantages)]

        def rate(kind: str, outcome: Outcome) -> float:
            hit = outcomes[f"{kind}:{outcome.value}"]
            valid = sum(v for k, v in outcomes.items() if k.startswith(f"{kind}:") and not k.endswith("judge_invalid"))
            return hit / valid if valid else float("nan")

        def_rewards = [m[2] for (kind, _), ms in groups.items() if kind in ("attack", "replay", "benign") for m in ms if m[2] is not None]
        metrics = {
            "reward/attacker": _mean(attack_rewards),
            "reward/defender": _mean(def_rewards),
            "reward/defender_attack": _mean([m[2] for (k, _), ms in groups.items() if k == "attack" for m in ms if m[2] is not None]),
            "reward/defender_replay": _mean([x for xs in replay_rewards.values() for x in xs]),
            "reward/defender_benign": _mean([m[2] for (k, _), ms in groups.items() if k == "benign" for m in ms if m[2] is not None]),
            "train_asr": rate("attack", Outcome.JAILBROKEN),
            "replay_asr": rate("replay", Outcome.JAILBROKEN),
            "benign_refusal": rate("benign", Outcome.BENIGN_REFUSED),
            "attack_parse_rate": _mean([float(a.text is not None) for a in attacks]),
            "intent_gate_pass": _mean([float(a.gate_passed) for a in attacks if a.text is not None]),
            "reflect_accepted": float(reflect_accepted),
            "judge_invalid": float(invalid),
            "judged": float(len(verdicts)),
            "flat_group_share": flat_groups / total_groups if total_groups else float("nan"),
            "samples/attacker": float(sum(s.role == "attacker" for s in samples)),
            "samples/defender": float(sum(s.role == "defender" for s in samples)),
        }
        metrics.update({f"outcome/{k}": float(v) for k, v in sorted(outcomes.items())})
        return StepResult(samples, exchanges, candidates, replay_rewards, metrics)
