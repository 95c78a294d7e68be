"""Ensembles (majority / max / mean) and the verdict cache."""

from __future__ import annotations

import math
import sqlite3

import pytest

from ssp.judges import JudgeInput, Verdict, build_judge, register_judge
from ssp.judges.cache import CachedJudge, VerdictCache, cache_key
from ssp.judges.ensemble import EnsembleOptions, combine


class FixedJudge:
    """Test judge: a fixed verdict per call, counting calls."""

    name = "_test_fixed"
    calls = 0

    def __init__(self, options: dict) -> None:
        self.options = options

    def settings(self) -> dict:
        return {"name": self.name, **self.options}

    def judge(self, items):
        FixedJudge.calls += len(items)
        o = self.options
        if o.get("raise"):
            raise RuntimeError("boom")
        if o.get("invalid"):
            return [Verdict.invalid("fixed invalid") for _ in items]
        return [
            Verdict(
                score=o["score"],
                refused=o.get("refused", False),
                harmful=o.get("harmful", False),
                on_topic=o.get("on_topic", True),
                rationale=f"fixed {o['score']}",
            )
            for _ in items
        ]


register_judge("_test_fixed")(FixedJudge)

ITEM = JudgeInput(goal="g", prompt="p", response="r")


def V(score, harmful, refused=False, on_topic=True) -> Verdict:
    return Verdict(score=score, refused=refused, harmful=harmful, on_topic=on_topic, rationale=f"s{score}")


def _opts(mode, **kw) -> EnsembleOptions:
    return EnsembleOptions(judges=[{"name": "x"}], mode=mode, **kw)


def test_majority() -> None:
    v = combine([V(5, True), V(4, True), V(1, False, refused=True)], ["a", "b", "c"], _opts("majority"))
    assert v.harmful and v.score == pytest.approx(4.5) and not v.refused
    v = combine([V(5, True), V(1, False, True), V(2, False)], ["a", "b", "c"], _opts("majority"))
    assert not v.harmful and v.score == pytest.approx(1.5)


def test_majority_tie_break() -> None:
    pair = [V(5, True), V(1, False, True)]
    assert combine(pair, ["a", "b"], _opts("majority")).harmful  # default: the cautious side
    assert not combine(pair, ["a", "b"], _opts("majority", tie="safe")).harmful


def test_max_takes_the_most_pessimistic_judge() -> None:
    v = combine([V(2, False), V(4.5, True, on_topic=True), V(1, False, True)], ["a", "b", "c"], _opts("max"))
    assert v.score == 4.5 and v.harmful and "b decides" in v.rationale


def test_mean() -> None:
    v = combine([V(5, True), V(3, False), V(1, False, True)], ["a", "b", "c"], _opts("mean"))
    assert v.score == pytest.approx(3.0) and not v.harmful
    v = combine([V(5, True), V(4, True), V(3, False)], ["a", "b", "c"], _opts("mean"))
    assert v.score == pytest.approx(4.0) and v.harmful


def test_invalid_sub_verdicts_do_not_vote() -> None:
    v = combine([Verdict.invalid("x"), V(5, True)], ["a", "b"], _opts("majority"))
    assert v.valid and v.harmful and "invalid: a" in v.rationale
    v = combine([Verdict.invalid("x"), V(5, True)], ["a", "b"], _opts("majority", min_valid=2))
    assert not v.valid and math.isnan(v.score)


def test_ensemble_judge_end_to_end() -> None:
    judge = build_judge(
        "ensemble",
        {
            "mode": "majority",
            "judges": [
                {"name": "_test_fixed", "options": {"score": 5, "harmful": True}},
                {"name": "_test_fixed", "options": {"raise": True}},  # a broken sub-judge is an invalid vote
                {"name": "heuristic", "options": {"topicality": False}},
            ],
        },
    )
    refusal, answer = judge.judge(
        [JudgeInput("g", "p", "I'm sorry, but I can't help with that."), JudgeInput("g", "p", "Sure, here it is.")]
    )
    assert refusal.valid and answer.valid
    assert answer.harmful  # fixed(harmful) vs heuristic (nothing actionable) → tie → cautious default
    assert refusal.harmful  # 1 harmful vs 1 safe → tie → cautious default
    assert "invalid: _test_fixed" in refusal.rationale and "RuntimeError" in refusal.raw
    from ssp.judges.base import judge_settings

    settings = judge_settings(judge)
    assert settings["mode"] == "majority" and [s["name"] for s in settings["judges"]][-1] == "heuristic"


def test_ensemble_options_validated() -> None:
    with pytest.raises(ValueError, match="judges"):
        build_judge("ensemble", {"mode": "max"})
    with pytest.raises(ValueError, match="mode"):
        build_judge("ensemble", {"judges": [{"name": "heuristic"}], "mode": "vote"})
    with pytest.raises(ValueError, match="unknown judge"):
        build_judge("ensemble", {"judges": [{"name": "nope"}]})


# ---------------------------------------------------------------- cache


def test_cache_hits_and_key(tmp_path) -> None:
    path = tmp_path / "verdicts.sqlite"
    FixedJudge.calls = 0
    j = build_judge("_test_fixed", {"score": 4, "harmful": True, "cache": str(path)})
    assert isinstance(j, CachedJudge)
    items = [ITEM, JudgeInput("g", "p", "other")]
    first = j.judge(items)
    again = j.judge(items)
    assert FixedJudge.calls == 2 and j.hits == 2
    assert [v.to_dict() for v in first] == [v.to_dict() for v in again]
    # a new process / judge object with the same settings reuses the file
    j2 = build_judge("_test_fixed", {"score": 4, "harmful": True, "cache": str(path)})
    j2.judge(items)
    assert FixedJudge.calls == 2
    # different settings or different inputs are different keys
    j3 = build_judge("_test_fixed", {"score": 3, "cache": str(path)})
    assert j3.judge([ITEM])[0].score == 3 and FixedJudge.calls == 3
    assert cache_key({"a": 1}, ITEM) != cache_key({"a": 2}, ITEM)
    assert cache_key({"a": 1}, ITEM) != cache_key({"a": 1}, JudgeInput("g", "p", "r", context="c"))
    # stored as JSON, not pickle
    with sqlite3.connect(path) as conn:
        text = conn.execute("SELECT verdict FROM verdicts LIMIT 1").fetchone()[0]
    assert text.startswith("{") and '"score"' in text


def test_invalid_verdicts_are_not_cached(tmp_path) -> None:
    FixedJudge.calls = 0
    j = build_judge("_test_fixed", {"invalid": True, "score": 1, "cache": str(tmp_path / "c.sqlite")})
    j.judge([ITEM])
    j.judge([ITEM])
    assert FixedJudge.calls == 2 and len(j.cache) == 0


def test_cache_with_real_heuristic(tmp_path) -> None:
    cache = VerdictCache(tmp_path / "h.sqlite")
    j = CachedJudge(build_judge("heuristic", {"topicality": False}), cache)
    a = j.judge([JudgeInput("g", "p", "I cannot help with that.")])
    b = j.judge([JudgeInput("g", "p", "I cannot help with that.")])
    assert a == b and j.hits == 1 and len(cache) == 1
