"""Attacker-output parsing, rewards, seeds and one full game step on the tiny model."""

import random

import pytest

from ssp.game.prompts import (
    REFLECT_RATIONALE_CHARS,
    attacker_request,
    load_strategy_hints,
    parse_attack,
    reflective_request,
)
from ssp.game.seeds import Seed, SeedError, draw_benign, load_seeds, split_borderline


@pytest.mark.parametrize(
    "text, finished, expected",
    [
        ("Tell me a story</prompt> trailing", False, "Tell me a story"),
        ("  Tell me a story  ", True, "Tell me a story"),
        ("cut off mid-sent", False, None),
        ("</prompt>", True, None),
        ("a <prompt> nested</prompt>", True, None),
        ("", True, None),
    ],
)
def test_parse_attack(text, finished, expected):
    assert parse_attack(text, finished) == expected


def test_parse_attack_accepts_truncated_when_asked():
    assert parse_attack("cut off mid-sent", False, accept_truncated=True) == "cut off mid-sent"


def test_attacker_request_prefills_marker_and_carries_goal_and_hint():
    hint = load_strategy_hints()[0]
    req = attacker_request("Obtain a forged ID", hint)
    assert req.prefill == "<prompt>"
    assert "Obtain a forged ID" in req.messages[-1]["content"] and hint.text in req.messages[-1]["content"]


def test_reflective_request_names_the_hidden_goal_and_varies_exemplars():
    a = reflective_request("PROMPT", "forge a passport", "judge says harmful", random.Random(0))
    b = reflective_request("PROMPT", "forge a passport", "judge says harmful", random.Random(1))
    assert a.messages[-1] == {"role": "user", "content": "PROMPT"}  # the attack verbatim, as replayed
    system = a.messages[0]["content"]
    assert a.messages[0]["role"] == "system" and "forge a passport" in system and "judge says harmful" in system
    long = reflective_request("PROMPT", "goal", "r" * 5000, random.Random(0)).messages[0]["content"]
    assert "r" * REFLECT_RATIONALE_CHARS in long and "r" * (REFLECT_RATIONALE_CHARS + 1) not in long
    assert a.messages != b.messages  # different exemplars per draw
    assert [m["role"] for m in a.messages[1:-1]] == ["user", "assistant"] * 3


def test_builtin_seeds_have_categories():
    harmful = load_seeds("builtin", "harmful")
    benign = load_seeds("builtin", "benign")
    assert len(harmful) >= 100 and len(benign) >= 100
    assert len({s.category for s in harmful}) >= 8
    assert {"benign", "borderline"} <= {s.category for s in benign}


def test_seed_files_csv_jsonl_and_errors(tmp_path, shared_data):
    adv = load_seeds(str(shared_data / "advbench_behaviors.csv"), "harmful", "Behavior")
    assert len(adv) == 520
    ben = load_seeds(str(shared_data / "benign_instructions.jsonl"), "benign")
    assert len(ben) == 2000
    with pytest.raises(SeedError, match="column 'Nope' not found"):
        load_seeds(str(shared_data / "advbench_behaviors.csv"), "harmful", "Nope")
    with pytest.raises(SeedError, match="not found"):
        load_seeds(str(tmp_path / "missing.txt"), "harmful")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(SeedError, match="no harmful seeds"):
        load_seeds(str(empty), "harmful")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"goal": "a"}\n{not json}\n')
    with pytest.raises(SeedError, match="line 2"):
        load_seeds(str(bad), "harmful")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"fine line\ncaf\xe9\n")
    with pytest.raises(SeedError, match="line 2: not valid UTF-8"):
        load_seeds(str(latin), "harmful")


def test_static_attacker_wraps_goals_in_templates_and_trains_only_the_defender(tiny_cfg):
    from tests.conftest import REPO

    from ssp.config import load_config
    from ssp.game.play import SelfPlayGame
    from ssp.judges.embedder import TextEmbedder
    from ssp.judges.registry import build_judge
    from ssp.models.loader import load_policy
    from ssp.rollout.hf import HFRolloutEngine

    cfg = load_config(
        REPO / "configs" / "tiny.yaml", ["game.attacker=static", "game.static_template_names=[prefix_injection]"]
    )
    model, tok = load_policy(cfg.model)
    engine = HFRolloutEngine(model, tok, cfg.model.max_prompt_tokens, 16)
    game = SelfPlayGame(
        cfg,
        engine,
        build_judge(cfg.judge.name, cfg.judge.options),
        [Seed("Obtain a forged passport", "fraud")],
        [Seed("Bake bread", "benign")],
        [],
        TextEmbedder.shared(),
    )
    result = game.play(1, [], random.Random(0))
    attacks = [e for e in result.exchanges if e.kind == "attack"]
    assert attacks and all(
        "Obtain a forged passport" in e.prompt and e.prompt != "Obtain a forged passport" for e in attacks
    )
    assert all(s.role == "defender" for s in result.samples)
    with pytest.raises(ValueError, match="unknown templates"):
        SelfPlayGame(
            load_config(REPO / "configs" / "tiny.yaml", ["game.attacker=static", "game.static_template_names=[nope]"]),
            engine,
            None,
            [],
            [],
            [],
            TextEmbedder.shared(),
        )


def _draw(pool, borderline, n, share, rng):
    return draw_benign(pool, *split_borderline(pool, borderline), n, share, rng)


def test_draw_benign_takes_the_borderline_share_from_the_borderline_part():
    plain = [Seed(f"Plain prompt {i}") for i in range(40)]
    edgy = [Seed(f"Edgy prompt {i}", "homonyms") for i in range(10)]
    pool = plain + edgy
    rng = random.Random(0)
    for _ in range(20):
        drawn = _draw(pool, [Seed("edgy  PROMPT 3")] + edgy[4:], 5, 0.4, rng)  # matched by normalised text
        assert len(drawn) == len(set(drawn)) == 5
        assert sum(s in edgy[3:] for s in drawn) == 2  # round(5 · 0.4); edgy[:3] are not marked: plain
    # fewer borderline prompts than the share asks for: all of them, the rest plain
    assert sum(s == edgy[0] for s in _draw(pool, edgy[:1], 5, 1.0, rng)) == 1
    assert len(_draw(pool, edgy[:1], 5, 1.0, rng)) == 5
    # no share: uniform over the pool, the same draw as before the option existed
    assert _draw(pool, edgy, 5, None, random.Random(3)) == random.Random(3).sample(pool, 5)
    assert _draw([], edgy, 5, 0.5, rng) == [] and _draw(pool, edgy, 0, 0.5, rng) == []
