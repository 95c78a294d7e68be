"""Experience pool (src/ssp/replay): UCB order, modes, admission, dedup, capacity, running mean,
retirement, persistence, snapshot/restore, crash atomicity and arbitrary text."""

from __future__ import annotations

import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssp.config import ReplayConfig
from ssp.replay import Candidate, ExperiencePool, PoolError, clean_text, text_hash, ucb_score
from ssp.replay.ucb import rank_top


def cand(goal: str, r: float, attack: str | None = None, score: float = 4.0) -> Candidate:
    return Candidate(
        goal=goal,
        attack=attack if attack is not None else f"attack on {goal}",
        responses=[f"bad answer to {goal}", "another"],
        score=score,
        rationale=f"complied with {goal}",
        mean_reward=r,
    )


def make(tmp_path: Path, name: str = "pool.sqlite", **kw) -> ExperiencePool:
    return ExperiencePool(tmp_path / name, ReplayConfig(**kw))


def ids(entries) -> list[int]:
    return [e.id for e in entries]


# ---------------------------------------------------------------- the UCB formula


def test_ucb_score_hand_computed():
    # N = 0: ln(1) = 0, no bonus
    assert ucb_score(0.3, 0, 0, 0.5) == pytest.approx(0.7)
    # N = 3, n = 0: 0.7 + 0.5 * sqrt(ln 4 / 1) = 0.7 + 0.5 * 1.1774100225 = 1.2887050113
    assert ucb_score(0.3, 0, 3, 0.5) == pytest.approx(1.2887050113, abs=1e-9)
    # N = 3, n = 2: 0.7 + 0.5 * sqrt(ln 4 / 3) = 0.7 + 0.5 * 0.6797779934 = 1.0398889967
    assert ucb_score(0.3, 2, 3, 0.5) == pytest.approx(1.0398889967, abs=1e-9)
    # N = 3, n = 1, r = 0.25: 0.75 + 0.5 * sqrt(ln 4 / 2) = 0.75 + 0.5 * 0.8325546112 = 1.1662773056
    assert ucb_score(0.25, 1, 3, 0.5) == pytest.approx(1.1662773056, abs=1e-9)
    # c = 0 is the priority score
    assert ucb_score(0.25, 7, 100, 0.0) == pytest.approx(0.75)


def _three_entry_state(pool: ExperiencePool) -> None:
    """A: r=0.3, n=0 | B: r̄=0.3, n=2 | C: r̄=0.25, n=1 | N=3 (ids 1, 2, 3)."""
    assert pool.admit([cand("A", 0.3), cand("B", 0.1), cand("C", 0.4)], step=0) == 3
    pool.update({2: [0.5]}, step=1)  # B: (0.1 + 0.5) / 2 = 0.3, n=1
    pool.update({2: [0.2, 0.4]}, step=2)  # event mean 0.3 -> B: (0.1 + 0.5 + 0.3) / 3 = 0.3, n=2
    pool.update({3: [0.1]}, step=3)  # C: (0.4 + 0.1) / 2 = 0.25, n=1


def test_ucb_select_order_hand_computed(tmp_path):
    with make(tmp_path, mode="ucb", exploration=0.5) as pool:
        _three_entry_state(pool)
        a, b, c = pool.get(1), pool.get(2), pool.get(3)
        assert (a.n_replays, a.mean_reward) == (0, pytest.approx(0.3))
        assert (b.n_replays, b.mean_reward) == (2, pytest.approx(0.3))
        assert (c.n_replays, c.mean_reward) == (1, pytest.approx(0.25))
        assert pool.total_replays == 3
        # u_A = 1.28871, u_C = 1.16628, u_B = 1.03989
        assert a.ucb == pytest.approx(1.2887050113, abs=1e-9)
        assert b.ucb == pytest.approx(1.0398889967, abs=1e-9)
        assert c.ucb == pytest.approx(1.1662773056, abs=1e-9)
        got = pool.select(3, random.Random(0))
        assert ids(got) == [1, 3, 2]
        assert ids(pool.select(2, random.Random(0))) == [1, 3]
        assert ids(pool.select(10, random.Random(0))) == [1, 3, 2]  # k > size: all, in order
        assert pool.select(0, random.Random(0)) == []
        assert ids(pool.top(3)) == [1, 3, 2]
        assert [e.ucb for e in got] == sorted((e.ucb for e in got), reverse=True)


def test_priority_mode_ignores_the_bonus_and_breaks_ties_by_age(tmp_path):
    with make(tmp_path, mode="priority", exploration=0.5) as pool:
        _three_entry_state(pool)
        # 1 − r̄: C 0.75, A 0.7, B 0.7 (tie: older id first)
        assert ids(pool.select(3, random.Random(0))) == [3, 1, 2]
        assert ids(pool.select(1, random.Random(0))) == [3]
        # top() ranks by u_i whatever the mode
        assert ids(pool.top(3)) == [1, 3, 2]


def test_ucb_ties_are_broken_by_age(tmp_path):
    with make(tmp_path, mode="ucb", exploration=1.0) as pool:
        pool.admit([cand(f"g{i}", 0.2) for i in range(6)], step=0)
        assert ids(pool.select(3, random.Random(0))) == [1, 2, 3]
        # argpartition boundary ties: entries 2..6 all tie below entry 1
        pool.update({1: [0.0]}, step=1)  # r̄_1 = 0.1, n_1 = 1; others r̄ = 0.2, n = 0, larger bonus
        # N = 1: u_1 = 0.9 + sqrt(ln2 / 2) = 1.48871; others 0.8 + sqrt(ln 2) = 1.63255
        assert ids(pool.select(4, random.Random(0))) == [2, 3, 4, 5]


def test_uniform_mode_is_reproducible_and_covers_live_entries(tmp_path):
    with make(tmp_path, mode="uniform", retire_after=1, retire_at=0.8) as pool:
        pool.admit([cand(f"g{i}", 0.1) for i in range(10)], step=0)
        pool.update({10: [1.0]}, step=1)  # (0.1 + 1) / 2 = 0.55: stays
        pool.update({10: [1.0]}, step=2)  # (0.1 + 2) / 3 = 0.7: stays
        pool.update({10: [1.0]}, step=3)  # (0.1 + 3) / 4 = 0.775: stays
        pool.update({10: [1.0]}, step=4)  # (0.1 + 4) / 5 = 0.82 ≥ 0.8: retired
        assert len(pool) == 9
        a = ids(pool.select(4, random.Random(123)))
        b = ids(pool.select(4, random.Random(123)))
        assert a == b and len(set(a)) == 4 and 10 not in a
        assert sorted(ids(pool.select(50, random.Random(1)))) == list(range(1, 10))
        counts = {i: 0 for i in range(1, 10)}
        rng = random.Random(7)
        for _ in range(900):
            for e in pool.select(1, rng):
                counts[e.id] += 1
        assert 10 not in counts and all(60 <= c <= 140 for c in counts.values()), counts


def test_none_mode_selects_nothing(tmp_path):
    with make(tmp_path, mode="none") as pool:
        assert pool.admit([cand("g", 0.0)], step=0) == 1
        assert pool.select(5, random.Random(0)) == []
        assert len(pool) == 1


# ---------------------------------------------------------------- admission and dedup


def test_admission_threshold(tmp_path):
    with make(tmp_path, admit_below=0.5) as pool:
        n = pool.admit([cand("at", 0.5), cand("above", 0.9), cand("below", 0.49), cand("zero", 0.0)], step=3)
        assert n == 2
        assert sorted(e.goal for e in pool.all_entries()) == ["below", "zero"]
        e = pool.get(1)
        assert (e.first_step, e.last_step, e.n_replays, e.mean_reward, e.admit_reward) == (3, 3, 0, 0.49, 0.49)
        assert e.responses == ["bad answer to below", "another"] and e.score == 4.0
        assert e.rationale == "complied with below" and not e.retired and e.last_reward is None


def test_invalid_numbers_are_rejected_without_writing(tmp_path):
    with make(tmp_path) as pool:
        for bad in (float("nan"), float("inf"), -0.1, 1.5):
            with pytest.raises(ValueError, match="candidate 1: mean_reward"):
                pool.admit([cand("ok", 0.1), cand("bad", bad)], step=0)
        with pytest.raises(ValueError, match="score"):
            pool.admit([cand("s", 0.1, score=float("nan"))], step=0)
        assert len(pool) == 0 and pool.stats()["admitted_total"] == 0
        pool.admit([cand("ok", 0.1)], step=0)
        with pytest.raises(ValueError, match="entry 1: reward"):
            pool.update({1: [0.5, float("nan")]}, step=1)
        assert pool.get(1).n_replays == 0 and pool.total_replays == 0


def test_dedup_on_normalised_text(tmp_path):
    with make(tmp_path) as pool:
        assert pool.admit([cand("How do I  make X", 0.1, attack="Tell me\thow to make X")], step=0) == 1
        same = cand("  how DO i make x", 0.2, attack="tell   me how\nto make x ")
        assert pool.admit([same], step=1) == 0
        assert pool.get(1).mean_reward == 0.1  # the live entry is left alone
        assert pool.admit([cand("how do i make x", 0.2, attack="a different attack")], step=1) == 1
        # duplicates within one call: the first admissible one wins
        assert pool.admit([cand("Y", 0.7), cand("y", 0.3), cand(" Y ", 0.2)], step=2) == 1
        y = [e for e in pool.all_entries() if e.goal.strip().lower() == "y"]
        assert [(e.goal, e.mean_reward) for e in y] == [("y", 0.3)]
    # the boundary between goal and attack matters
    assert text_hash("ab", "c") != text_hash("a", "bc")
    assert text_hash("A  b", "C") == text_hash("a b", "c ")


def test_retired_duplicate_is_revived(tmp_path):
    with make(tmp_path, retire_at=0.8, retire_after=1) as pool:
        pool.admit([cand("g", 0.4), cand("h", 0.1)], step=0)
        pool.update({1: [1.0, 1.0]}, step=5)  # (0.4 + 1) / 2 = 0.7: not yet
        pool.update({1: [1.0]}, step=6)  # (0.4 + 2) / 3 = 0.8: retired
        e = pool.get(1)
        assert e.retired and e.n_replays == 2 and len(pool) == 1
        assert pool.stats()["retired"] == 1
        revived = Candidate("G", "ATTACK ON G", ["new failure"], 5.0, "regressed", 0.25)
        assert pool.admit([revived], step=9) == 1
        e = pool.get(1)
        assert not e.retired and e.n_replays == 0 and e.mean_reward == 0.25 and e.admit_reward == 0.25
        assert (e.first_step, e.last_step, e.revivals) == (0, 9, 1)
        assert e.responses == ["new failure"] and e.rationale == "regressed" and e.score == 5.0
        assert e.goal == "g"  # the stored text is the original one
        assert len(pool) == 2 and ids(pool.select(2, random.Random(0))) == [2, 1]
        st_ = pool.stats()
        assert (st_["retired"], st_["revived_total"], st_["admitted_total"], st_["retired_total"]) == (0, 1, 3, 1)
        pool.update({2: [1.0]}, step=10)  # (0.1 + 1) / 2 = 0.55: stays
        pool.update({2: [1.0]}, step=11)  # (0.1 + 2) / 3 = 0.7: stays
        pool.update({2: [1.0]}, step=12)  # (0.1 + 3) / 4 = 0.775: stays
        pool.update({2: [1.0]}, step=13)  # (0.1 + 4) / 5 = 0.82: retired
        counted = pool._conn.execute("SELECT COUNT(*) FROM entries WHERE retired = 1").fetchone()[0]
        assert pool.stats()["retired"] == counted == 1 and len(pool) == 1


# ---------------------------------------------------------------- capacity


def test_capacity_evicts_lowest_ucb_not_lowest_priority(tmp_path):
    with make(tmp_path, mode="ucb", exploration=0.5, capacity=3) as pool:
        _three_entry_state(pool)
        # D: r = 0.45, n = 0 -> u_D = 0.55 + 0.5 * sqrt(ln 4) = 1.1387050113
        # live u: A 1.28871, C 1.16628, D 1.13871, B 1.03989 -> B goes, though r̄_B = 0.3 < r_D = 0.45
        assert pool.admit([cand("D", 0.45)], step=4) == 1
        assert sorted(ids(pool.all_entries())) == [1, 3, 4]
        assert pool.get(2) is None
        assert pool.stats()["evicted_total"] == 1 and len(pool) == 3
        assert ids(pool.select(3, random.Random(0))) == [1, 3, 4]
        assert pool.update({2: [0.0]}, step=5) == 0  # an evicted id is ignored


def test_capacity_ties_evict_the_newest(tmp_path):
    with make(tmp_path, capacity=2) as pool:
        # N = 0: u = 1 − r. r = 0.1, 0.3, 0.3, 0.3 -> keep id 1 and id 2 (oldest of the ties)
        assert pool.admit([cand("a", 0.1), cand("b", 0.3), cand("c", 0.3), cand("d", 0.3)], step=0) == 4
        assert ids(pool.all_entries()) == [1, 2]
        # a new hard case pushes out the weakest (lowest u: id 2, u 0.7)
        pool.admit([cand("e", 0.0)], step=1)
        assert ids(pool.all_entries()) == [1, 5]
        assert pool.stats()["evicted_total"] == 3


def test_retired_entries_do_not_count_towards_capacity(tmp_path):
    with make(tmp_path, capacity=2, retire_at=0.8, retire_after=1) as pool:
        pool.admit([cand("a", 0.4), cand("b", 0.1)], step=0)
        pool.update({1: [1.0, 1.0, 1.0]}, step=1)  # (0.4 + 1) / 2 = 0.7
        pool.update({1: [1.0]}, step=2)  # 0.8: retired
        pool.admit([cand("c", 0.2)], step=3)
        assert len(pool) == 2 and pool.stats()["retired"] == 1 and pool.stats()["evicted_total"] == 0


# ---------------------------------------------------------------- update and retirement


def test_running_mean_and_retirement(tmp_path):
    with make(tmp_path, retire_at=0.8, retire_after=3) as pool:
        pool.admit([cand("a", 0.4), cand("b", 0.2)], step=0)
        assert pool.update({1: [1.0, 1.0], 2: [1.0]}, step=1) == 2
        assert pool.total_replays == 2
        assert pool.update({1: [1.0], 2: [], 99: [0.0]}, step=2) == 1  # empty list and unknown id: no event
        e = pool.get(1)
        assert (e.n_replays, e.mean_reward, e.last_step, e.last_reward) == (2, pytest.approx(0.8), 2, 1.0)
        assert not e.retired  # r̄ = 0.8 but only 2 replays
        pool.update({1: [1.0, 0.0, 1.0, 1.0]}, step=3)  # event mean 0.75 -> (0.4 + 1 + 1 + 0.75) / 4 = 0.7875
        e = pool.get(1)
        assert e.n_replays == 3 and e.mean_reward == pytest.approx(0.7875) and not e.retired
        pool.update({1: [1.0]}, step=4)  # (3.15 + 1) / 5 = 0.83
        e = pool.get(1)
        assert e.retired and e.n_replays == 4 and e.mean_reward == pytest.approx(0.83)
        assert ids(pool.select(5, random.Random(0))) == [2]
        assert pool.update({1: [0.0]}, step=5) == 0  # retired: ignored
        b = pool.get(2)
        assert (b.n_replays, b.mean_reward, b.last_step) == (1, pytest.approx(0.6), 1)
        assert pool.total_replays == 5  # events: 2 + 1 + 1 + 1


def test_stats(tmp_path):
    with make(tmp_path, exploration=0.5) as pool:
        empty = pool.stats()
        assert empty["size"] == 0 and empty["mean_reward"] is None and empty["max_ucb"] is None
        _three_entry_state(pool)
        s = pool.stats()
        assert s["size"] == 3 and s["retired"] == 0 and s["admitted_total"] == 3 and s["replays_total"] == 3
        assert s["mean_reward"] == pytest.approx((0.3 + 0.3 + 0.25) / 3)
        assert s["mean_replays"] == pytest.approx(1.0)
        assert s["max_ucb"] == pytest.approx(1.2887050113, abs=1e-9)


# ---------------------------------------------------------------- durability


def test_persistence_across_close_and_reopen(tmp_path):
    pool = make(tmp_path, exploration=0.5)
    _three_entry_state(pool)
    before = [e.to_dict() for e in pool.all_entries()]
    stats = pool.stats()
    pool.close()
    pool.close()  # idempotent
    with pytest.raises(PoolError):
        pool.stats()
    with make(tmp_path, exploration=0.5) as again:
        assert [e.to_dict() for e in again.all_entries()] == before
        assert again.stats() == stats
        assert ids(again.select(3, random.Random(0))) == [1, 3, 2]
    with ExperiencePool(tmp_path / "pool.sqlite", ReplayConfig(), readonly=True) as ro:
        assert len(ro) == 3 and ids(ro.top(1)) == [1]
        with pytest.raises(PoolError, match="read-only"):
            ro.admit([cand("new", 0.0)], step=9)


def test_not_a_pool_is_refused(tmp_path):
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER)")
    con.execute("INSERT INTO meta VALUES ('schema_version', 999)")
    con.commit()
    con.close()
    with pytest.raises(PoolError, match="schema version 999"):
        ExperiencePool(other, ReplayConfig())
    (tmp_path / "junk.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(PoolError, match="not an experience pool"):
        ExperiencePool(tmp_path / "junk.sqlite", ReplayConfig())
    with pytest.raises(PoolError, match="not found"):
        ExperiencePool(tmp_path / "missing.sqlite", ReplayConfig(), readonly=True)


def test_snapshot_restore_round_trip(tmp_path):
    live = tmp_path / "run" / "pool.sqlite"
    snap = tmp_path / "ckpt.tmp" / "pool.sqlite"
    cfg = ReplayConfig(exploration=0.5)
    with ExperiencePool(live, cfg) as pool:
        _three_entry_state(pool)
        pool.snapshot(snap)
        at_snapshot = ([e.to_dict() for e in pool.all_entries()], pool.stats())
        pool.admit([cand("after", 0.0)], step=4)
        pool.update({1: [0.0], 2: [1.0]}, step=5)
        assert len(pool) == 4
    # a stale journal beside the live file must not be replayed onto the restored one
    (live.parent / "pool.sqlite-journal").write_bytes(b"\0" * 4096)
    with ExperiencePool.restore(snap, live, cfg) as pool:
        assert ([e.to_dict() for e in pool.all_entries()], pool.stats()) == at_snapshot
        assert not (live.parent / "pool.sqlite-journal").exists()
        assert all(e.goal != "after" for e in pool.all_entries())
        assert ids(pool.select(3, random.Random(0))) == [1, 3, 2]
        pool.admit([cand("after restore", 0.0)], step=4)
        assert pool.get(4).goal == "after restore"  # the id sequence is the snapshot's too
    assert not list(live.parent.glob("*.tmp"))
    with ExperiencePool(snap, cfg, readonly=True) as s:  # the snapshot itself is untouched
        assert len(s) == 3


def test_restore_refuses_bad_snapshot_and_keeps_live_file(tmp_path):
    live = tmp_path / "pool.sqlite"
    with ExperiencePool(live, ReplayConfig()) as pool:
        pool.admit([cand("keep me", 0.1)], step=0)
    with pytest.raises(PoolError, match="not found"):
        ExperiencePool.restore(tmp_path / "nope.sqlite", live, ReplayConfig())
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"garbage" * 1000)
    with pytest.raises(PoolError, match="not a readable pool snapshot"):
        ExperiencePool.restore(bad, live, ReplayConfig())
    with ExperiencePool(live, ReplayConfig()) as pool:
        assert [e.goal for e in pool.all_entries()] == ["keep me"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.sqlite", "pool.sqlite"]
    ExperiencePool.delete_files(live)
    assert not live.exists()


class _FailingConn:
    """Delegates to a real connection; fails the meta update, i.e. mid-transaction."""

    def __init__(self, conn):
        self._conn = conn

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def executemany(self, sql, rows):
        if sql.startswith("UPDATE meta"):
            raise sqlite3.OperationalError("injected fault")
        return self._conn.executemany(sql, rows)


@pytest.mark.parametrize("op", ["admit", "update"])
def test_a_failed_transaction_changes_nothing(tmp_path, op):
    pool = make(tmp_path, exploration=0.5, capacity=3)
    _three_entry_state(pool)
    before = ([e.to_dict() for e in pool.all_entries()], pool.stats())
    real = pool._conn
    pool._conn = _FailingConn(real)
    with pytest.raises(sqlite3.OperationalError, match="injected"):
        if op == "admit":
            pool.admit([cand("D", 0.45), cand("E", 0.0)], step=4)  # would insert and evict
        else:
            pool.update({1: [1.0], 3: [1.0]}, step=4)
    pool._conn = real
    assert ([e.to_dict() for e in pool.all_entries()], pool.stats()) == before  # mirror in sync
    assert ids(pool.select(3, random.Random(0))) == [1, 3, 2]
    pool.close()
    with make(tmp_path, exploration=0.5, capacity=3) as again:
        assert ([e.to_dict() for e in again.all_entries()], again.stats()) == before


_KILL_CHILD = textwrap.dedent(
    """
    import sys
    from ssp.config import ReplayConfig
    from ssp.replay import Candidate, ExperiencePool
    pool = ExperiencePool(sys.argv[1], ReplayConfig(capacity=10**9))
    for b in range(10**6):
        pool.admit([Candidate(f"g{b}-{i}", "a" * 300, ["r" * 500], 4.0, "why", 0.1) for i in range(500)], b)
        print(b + 1, flush=True)
    """
)


def test_kill_9_during_admission_leaves_whole_batches(tmp_path):
    path = tmp_path / "pool.sqlite"
    import ssp.replay

    env = os.environ.copy()  # the child imports the same ssp as this test, installed or not
    src = str(Path(ssp.replay.__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-c", _KILL_CHILD, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        first = proc.stdout.readline()  # at least one batch committed
        assert first.strip() == "1"
        time.sleep(0.3)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    committed = int(([first] + proc.stdout.read().split())[-1])
    with ExperiencePool(path, ReplayConfig()) as pool:
        size = len(pool)
        assert size % 500 == 0 and size >= committed * 500 and size <= (committed + 1) * 500
        assert pool.stats()["admitted_total"] == size
        assert pool.admit([cand("after crash", 0.0)], step=0) == 1


# ---------------------------------------------------------------- arbitrary text

_any_text = st.text(max_size=200)
# lone surrogates: valid Python str, invalid Unicode; must not crash either
_with_surrogates = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=()), max_size=50)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(goal=_any_text, attack=_any_text, rationale=_any_text, responses=st.lists(_any_text, max_size=3))
def test_arbitrary_text_round_trips_exactly(goal, attack, rationale, responses):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "pool.sqlite"
        with ExperiencePool(path, ReplayConfig()) as pool:
            assert pool.admit([Candidate(goal, attack, responses, 3.5, rationale, 0.25)], step=1) == 1
            assert pool.admit([Candidate(goal.upper(), " " + attack + "\n", [], 3.0, "", 0.1)], step=2) in (0, 1)
        with ExperiencePool(path, ReplayConfig()) as pool:
            e = pool.get(1)
            assert (e.goal, e.attack, e.rationale, e.responses) == (goal, attack, rationale, responses)
            assert e.text_hash == text_hash(goal, attack)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(goal=_with_surrogates, attack=_with_surrogates, responses=st.lists(_with_surrogates, max_size=2))
def test_any_python_string_never_crashes(goal, attack, responses):
    with tempfile.TemporaryDirectory() as d:
        with ExperiencePool(Path(d) / "p.sqlite", ReplayConfig()) as pool:
            assert pool.admit([Candidate(goal, attack, responses, 2.0, attack, 0.0)], step=0) == 1
            e = pool.get(1)
            assert (e.goal, e.attack, e.responses) == (
                clean_text(goal),
                clean_text(attack),
                [clean_text(r) for r in responses],
            )
            assert "\ud800" not in e.goal
            assert pool.select(1, random.Random(0))[0].id == 1


def test_clean_text_only_touches_surrogates():
    assert clean_text("a\x00b\U0001f600 é") == "a\x00b\U0001f600 é"
    assert clean_text("x\ud800y") == "x\ufffdy"
    assert math.isfinite(ucb_score(0.0, 0, 10**9, 2.0))


# ---------------------------------------------------------------- against a reference model


@settings(max_examples=200, deadline=None)
@given(
    scores=st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5]), min_size=0, max_size=40),
    k=st.integers(0, 45),
    data=st.data(),
)
def test_rank_top_matches_a_full_sort(scores, k, data):
    import numpy as np

    tiebreak = data.draw(st.permutations(list(range(len(scores)))))
    got = rank_top(np.array(scores, dtype=float), np.array(tiebreak, dtype=np.int64), k).tolist()
    want = sorted(range(len(scores)), key=lambda i: (-scores[i], tiebreak[i]))[:k]
    assert got == want


@pytest.mark.parametrize("shape", ["random", "ascending", "descending", "few_values", "all_equal"])
@pytest.mark.parametrize("k", [1, 8, 100])
def test_rank_top_on_large_arrays(shape, k):
    import numpy as np

    rs = np.random.default_rng(0)
    size = 70_000
    scores = {
        "random": rs.random(size),
        "ascending": np.linspace(0.0, 1.0, size),
        "descending": np.linspace(1.0, 0.0, size),
        "few_values": rs.integers(0, 3, size).astype(float),
        "all_equal": np.full(size, 0.5),
    }[shape]
    tiebreak = rs.permutation(size).astype(np.int64)
    got = rank_top(scores, tiebreak, k)
    want = np.lexsort((tiebreak, -scores))[:k]
    assert got.tolist() == want.tolist()


class _Reference:
    """The documented semantics, written the slow and obvious way."""

    def __init__(self, cfg: ReplayConfig):
        self.cfg, self.rows, self.next_id, self.N = cfg, {}, 1, 0

    def u(self, row, c):
        return ucb_score(row["r"], row["n"], self.N, c)

    def live(self):
        return [i for i, row in self.rows.items() if not row["retired"]]

    def admit(self, cands):
        seen, added = set(), 0
        for goal, r in cands:
            h = text_hash(goal, "same attack")
            if not r < self.cfg.admit_below or h in seen:
                continue
            seen.add(h)
            hit = [i for i, row in self.rows.items() if row["h"] == h]
            if hit and not self.rows[hit[0]]["retired"]:
                continue
            if hit:
                self.rows[hit[0]].update(r=r, n=0, retired=False)
            else:
                self.rows[self.next_id] = {"h": h, "r": r, "n": 0, "retired": False}
                self.next_id += 1
            added += 1
        live = self.live()
        excess = len(live) - self.cfg.capacity
        if excess > 0:
            for i in sorted(live, key=lambda i: (self.u(self.rows[i], self.cfg.exploration), -i))[:excess]:
                del self.rows[i]
        return added

    def update(self, results):
        for i, rewards in results.items():
            row = self.rows.get(i)
            if row is None or row["retired"] or not rewards:
                continue
            x = math.fsum(rewards) / len(rewards)
            row["r"] = row["r"] + (x - row["r"]) / (row["n"] + 2.0)
            row["n"] += 1
            self.N += 1
            if row["r"] >= self.cfg.retire_at - 1e-9 and row["n"] >= self.cfg.retire_after:
                row["retired"] = True

    def order(self, c):
        return sorted(self.live(), key=lambda i: (-self.u(self.rows[i], c), i))


_goals = st.sampled_from(["g0", "G0 ", "g1", "g2", "g 3", "G  3", "g4", "g5", "g6"])
_admit_op = st.tuples(
    st.just("admit"), st.lists(st.tuples(_goals, st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.7])), max_size=5)
)
_update_op = st.tuples(
    st.just("update"),
    st.dictionaries(st.integers(1, 12), st.lists(st.sampled_from([0.0, 0.5, 1.0]), max_size=3), max_size=4),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.one_of(_admit_op, _update_op), max_size=25))
def test_pool_agrees_with_the_reference_model(ops):
    cfg = ReplayConfig(capacity=4, exploration=0.5, retire_at=0.6, retire_after=2, admit_below=0.5)
    ref = _Reference(cfg)

    def check(pool):
        rows = {e.id: e for e in pool.all_entries()}
        assert sorted(rows) == sorted(ref.rows)
        for i, row in ref.rows.items():
            assert (rows[i].mean_reward, rows[i].n_replays, rows[i].retired) == (row["r"], row["n"], row["retired"])
        assert pool.total_replays == ref.N and len(pool) == len(ref.live())
        assert ids(pool.select(20, random.Random(0))) == ref.order(cfg.exploration)
        pool.cfg = cfg.model_copy(update={"mode": "priority"})
        assert ids(pool.select(20, random.Random(0))) == ref.order(0.0)
        pool.cfg = cfg
        assert ids(pool.top(2)) == ref.order(cfg.exploration)[:2]

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "pool.sqlite"
        with ExperiencePool(path, cfg) as pool:
            for step, (kind, arg) in enumerate(ops):
                if kind == "admit":
                    got = pool.admit([cand(g, r, attack="same attack") for g, r in arg], step)
                    assert got == ref.admit(arg)
                else:
                    pool.update(arg, step)
                    ref.update(arg)
                check(pool)
        with ExperiencePool(path, cfg) as pool:  # the mirror rebuilt from the file agrees too
            check(pool)


def test_paths_with_uri_characters_open_read_only_and_restore(tmp_path):
    """'?', '#', '%' and spaces in a folder name survive the read-only SQLite URI (they are percent-escaped)."""
    odd = tmp_path / "run ?x=1 #2 %41"
    cfg = ReplayConfig()
    with ExperiencePool(odd / "pool.sqlite", cfg) as pool:
        pool.admit([cand("odd path", 0.0)], step=1)
        pool.snapshot(odd / "ckpt" / "pool.sqlite")
    with ExperiencePool(odd / "pool.sqlite", cfg, readonly=True) as ro:
        assert [e.goal for e in ro.all_entries()] == ["odd path"]
    with ExperiencePool.restore(odd / "ckpt" / "pool.sqlite", odd / "restored.sqlite", cfg) as restored:
        assert len(restored) == 1
    assert not list(tmp_path.glob("run ?x=1*/*%*")) and not (tmp_path / "run ").exists()
