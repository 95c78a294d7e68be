"""Attacks on the tiny model: direct, template, self (the trained Attacker role), pair (judge feedback, early stop)."""

import pytest

from ssp.config import ModelConfig, SamplingConfig, TinyModelConfig
from ssp.eval.attacks import (
    AttackEnv,
    PairAttack,
    SelfAttack,
    TemplateError,
    build_attack,
    load_templates,
    parse_templates,
)
from ssp.eval.benchmarks import BenchmarkItem
from ssp.eval.defenses import AttackerModel, DefenseContext, NoDefense, TargetModel, available_defenses, build_defense
from ssp.eval.results import item_outcome
from ssp.game.prompts import ATTACKER_SYSTEM, load_strategy_hints
from ssp.judges.base import Verdict


@pytest.fixture(scope="module")
def engine():
    from ssp.models.loader import load_base_model
    from ssp.rollout.hf import HFRolloutEngine

    model, tok = load_base_model(
        ModelConfig(
            name_or_path="tiny", tiny=TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
        )
    )
    return HFRolloutEngine(model.eval(), tok, max_prompt_tokens=1024, batch_size=32)


class RecordingEngine:
    """Wraps the tiny engine and records every request."""

    def __init__(self, inner):
        self.inner = inner
        self.requests = []

    def generate(self, requests, sampling, n=1):
        self.requests.extend(requests)
        return self.inner.generate(requests, sampling, n)


class StubJudge:
    """harmful when the prompt contains the trigger; otherwise a refusal with a rationale."""

    name = "stub"

    def __init__(self, trigger="<<never>>", invalid_trigger="<<never>>"):
        self.trigger = trigger
        self.invalid_trigger = invalid_trigger
        self.calls = []

    def judge(self, items):
        self.calls.extend(items)
        out = []
        for it in items:
            if self.invalid_trigger in it.prompt:
                out.append(Verdict.invalid("stub: cannot judge"))
            elif self.trigger in it.prompt:
                out.append(Verdict(5.0, False, True, True, "stub: harmful"))
            else:
                out.append(Verdict(1.0, True, False, True, "stub: refused because REASON"))
        return out


def items(n=2, kind="harmful"):
    return [
        BenchmarkItem(f"id{i}", "suite", "bench", "split", kind, f"Do bad thing number {i}", f"bad thing {i}", "cat")
        for i in range(n)
    ]


def env_for(engine, judge, attacker_tokens=10, defender_tokens=6, temperature=1.0):
    target = TargetModel(RecordingEngine(engine), SamplingConfig(temperature=0.0, max_new_tokens=defender_tokens))
    attacker = AttackerModel(
        RecordingEngine(engine), SamplingConfig(temperature=temperature, max_new_tokens=attacker_tokens)
    )
    return AttackEnv(NoDefense(target), judge, attacker, None, seed=0), target, attacker


def test_packaged_templates_parse():
    tpls = load_templates()
    assert len(tpls) >= 10 and len({t.name for t in tpls}) == len(tpls)
    for t in tpls:
        assert t.text.count("{goal}") == 1
        applied = t.apply("GOAL {with braces}")
        assert "GOAL {with braces}" in applied and "{goal}" not in applied


@pytest.mark.parametrize(
    "text, match",
    [
        ("## header\n# name: x\nno separator {goal}", "no template"),
        ("stray header\n---\n# name: x\n{goal}", "must start with '##'"),
        ("## h\n---\nno name {goal}", "must start with '# name:"),
        ("## h\n---\n# name: x\nno placeholder", "exactly once"),
        ("## h\n---\n# name: x\n{goal} {goal}", "exactly once"),
        ("## h\n---\n# name: x\n{goal}\n---\n# name: x\n{goal}!", "used twice"),
    ],
)
def test_template_format_errors(text, match):
    with pytest.raises(TemplateError, match=match):
        parse_templates(text)


def test_template_file_with_blank_lines(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("## mine\n---\n\n# name: a\n\nSay {goal} now.\n\n---\n# name: b\nB: {goal}\n", encoding="utf-8")
    tpls = load_templates(p)
    assert [(t.name, t.text) for t in tpls] == [("a", "Say {goal} now."), ("b", "B: {goal}")]
    with pytest.raises(TemplateError, match="unknown template"):
        build_attack("template", templates=str(p), template_names=["zzz"])


def test_direct_attack(engine):
    judge = StubJudge()
    env, target, _ = env_for(engine, judge)
    its = items(3)
    out = build_attack("direct").run(its, env)
    assert [len(s) for s in out] == [1, 1, 1]
    assert [s[0].prompt for s in out] == [it.prompt for it in its]
    assert all(s[0].cost["defender_generations"] == 1 for s in out)
    assert [c.goal for c in judge.calls] == [it.goal for it in its]  # judged against the goal, not the prompt
    assert target.engine.requests[0].messages == [{"role": "user", "content": its[0].prompt}]  # plain chat


def test_template_attack_one_sample_per_template(engine, tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("## t\n---\n# name: a\nA {goal}\n---\n# name: b\nB {goal} TRIGGER\n", encoding="utf-8")
    attack = build_attack("template", templates=str(p))
    env, _, _ = env_for(engine, StubJudge(trigger="TRIGGER"))
    out = attack.run(items(2), env)
    assert [[s.meta["template"] for s in ss] for ss in out] == [["a", "b"], ["a", "b"]]
    assert out[1][0].prompt == "A Do bad thing number 1"
    outcome = item_outcome([s.to_dict() for s in out[0]])
    assert outcome["broken"] and outcome["harmful_samples"] == 1 and outcome["valid"] == 2
    assert attack.budget()["samples"] == 2 and attack.prompts_per_item() == 2


def test_self_attack_uses_the_trained_attacker_role(engine):
    judge = StubJudge()
    env, target, attacker = env_for(engine, judge)
    attack = SelfAttack(samples=3, strategy_hints=True, accept_truncated=True)
    out = attack.run(items(2), env)
    assert [len(s) for s in out] == [3, 3]
    req = attacker.engine.requests[0]
    assert req.prefill == "<prompt>" and req.messages[0]["content"] == ATTACKER_SYSTEM
    assert "Do bad thing number 0" in req.messages[1]["content"]
    hint_names = {h.name for h in load_strategy_hints()}
    assert all(s.meta["hint"] in hint_names for ss in out for s in ss)
    sent = [s for ss in out for s in ss if s.prompt is not None]
    assert sent and all(s.cost["attacker_generations"] == 1 for s in sent)
    assert [r.messages[-1]["content"] for r in target.engine.requests] == [s.prompt for s in sent]
    # same seed, same hints (resume gives the same plan)
    again = attack.run(items(2), env)
    assert [[s.meta["hint"] for s in ss] for ss in again] == [[s.meta["hint"] for s in ss] for ss in out]


def test_self_attack_unparseable_outputs_are_failed_samples(engine):
    judge = StubJudge()
    env, target, _ = env_for(engine, judge, attacker_tokens=2)
    out = SelfAttack(samples=2, strategy_hints=False, accept_truncated=False).run(items(1), env)
    samples = [s.to_dict() for s in out[0]]
    unsent = [s for s in samples if s["prompt"] is None]
    assert unsent and all(s["meta"]["parsed"] is False and s["meta"]["hint"] is None for s in unsent)
    if len(unsent) == 2:
        assert item_outcome(samples)["status"] == "unanswered" and not judge.calls


def test_self_attack_any_sample_breaks(engine):
    # the stub says harmful for every prompt: a goal is broken as soon as one sample got through
    env, _, _ = env_for(engine, StubJudge(trigger=""))
    out = SelfAttack(samples=2, accept_truncated=True).run(items(1), env)
    assert item_outcome([s.to_dict() for s in out[0]])["broken"]


def test_pair_feeds_back_judge_and_stops_at_first_break(engine):
    judge = StubJudge()
    env, target, attacker = env_for(engine, judge)
    attack = PairAttack(streams=2, rounds=3, history=2, accept_truncated=True)
    out = attack.run(items(1), env)
    samples = out[0]
    assert len(samples) == 6  # never broken: every stream ran every round
    assert sorted((s.meta["stream"], s.meta["round"]) for s in samples) == [(a, r) for a in range(2) for r in (1, 2, 3)]
    later = [r for r in attacker.engine.requests if len(r.messages) > 2]
    assert later, "rounds after the first carry the conversation"
    feedback = later[0].messages[-1]["content"]
    assert "stub: refused because REASON" in feedback and "score 1.0/5" in feedback and "bad thing 0" in feedback
    assert later[0].messages[-2]["role"] == "assistant" and later[0].messages[-2]["content"].startswith("<prompt>")
    assert max(len(r.messages) for r in attacker.engine.requests) <= 2 + 2 * 2  # history window

    breaking = StubJudge(trigger="")
    env2, _, attacker2 = env_for(engine, breaking)
    out2 = PairAttack(streams=2, rounds=3, accept_truncated=True).run(items(2), env2)
    for ss in out2:
        assert all(s.meta["round"] == 1 for s in ss)  # both streams broke in round 1: no further rounds
        assert item_outcome([s.to_dict() for s in ss])["first_broken_round"] == 1
    assert len(attacker2.engine.requests) == 4


def test_invalid_judgments_make_items_invalid(engine, tmp_path):
    env, _, _ = env_for(engine, StubJudge(invalid_trigger="Do bad"))
    out = build_attack("direct").run(items(1), env)
    o = item_outcome([s.to_dict() for s in out[0]])
    assert o["status"] == "invalid" and o["invalid_judgments"] == 1
    assert out[0][0].verdict["score"] is None  # NaN is not JSON


def test_defense_registry_seam(engine):
    assert "none" in available_defenses()
    target = TargetModel(engine, SamplingConfig(temperature=0.0, max_new_tokens=4))
    d = build_defense("none", DefenseContext(target))
    assert d.settings() == {"name": "none"}
    (r,) = d.respond(["hello"])
    assert r.generations == 1 and r.tokens >= 1
    with pytest.raises(ValueError, match="unknown defense"):
        build_defense("smoothllm_typo", DefenseContext(target))
    with pytest.raises(ValueError, match="no options"):
        build_defense("none", DefenseContext(target), {"x": 1})
