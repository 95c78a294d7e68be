"""Durable experience pool for Reflective Experience Replay (DESIGN.md §2), stored in SQLite.

The pool keeps the cases the Defender failed: goal G, the attack p it saw, the failing
responses, the judge's mean score and rationale, and replay statistics. Each step the trainer
asks for k entries (`select`), has the Defender answer them afresh, and reports the new
rewards (`update`).

Definitions (exact; the tests check them with hand-computed numbers)
--------------------------------------------------------------------
* Admission: a candidate enters when its mean defender reward r_def < `admit_below` (τ).
* Dedup key: sha256 of the normalised text of goal and attack. Normalisation = lower-case,
  runs of whitespace collapsed to one space, stripped; goal and attack are hashed as a
  pair length-prefixed (see `text_hash`) so that the boundary between them is unambiguous.
  - a duplicate of a *live* entry is skipped (its statistics are left alone);
  - a duplicate of a *retired* entry revives it: the Defender has failed again on a case it
    had mastered, so the old statistics are stale. The entry keeps its id and `first_step`,
    takes the new failure's responses, score and rationale, and restarts its statistics as a
    fresh admission (n_i = 0, r̄_i = the new admission mean, last_step = step); `revivals`
    counts how often that happened;
  - duplicates inside one `admit` call: the first admissible one wins.
  Evicted entries are deleted, so the same text can later be admitted again as a new entry.
* Running mean: the admission mean r_def is the first observation; each replay *event*
  (one per entry per `update` call, i.e. per step) contributes one observation, the mean
  of that step's fresh defender rewards for the entry. With n_i replays so far:
      r̄_i ← r̄_i + (x − r̄_i) / (n_i + 2),   n_i ← n_i + 1,   N ← N + 1
  so r̄_i = (r_admit + x_1 + … + x_{n_i}) / (1 + n_i). An empty reward list is no event.
* UCB: u_i = (1 − r̄_i) + c·sqrt(ln(1 + N) / (1 + n_i)), N = total replay events so far.
* Retirement: after an update, r̄_i ≥ `retire_at` (up to a 1e-9 rounding tolerance) and
  n_i ≥ `retire_after`. Retired entries stay in the file (for reports and revival) but are
  never selected, evicted or counted towards capacity.
* Capacity: after each admission, while more than `capacity` entries are live, the live
  entry with the lowest u_i is deleted (ties: the newest id goes first, i.e. eviction removes
  the tail of the UCB selection order). Eviction uses u_i in every mode, so the ablations
  (`replay.mode`) differ only in which entries are replayed, not in what the pool keeps.
* Selection order ties are broken by id, older first.

Performance: the live entries' (id, n_i, r̄_i) are mirrored in numpy arrays (replay/ucb.py) that
are changed only after the SQLite transaction that changes them has committed; top-k is a
vectorised score plus `np.argpartition` (milliseconds at 10^6 entries, see benchmarks/pool.py).
Text normalisation and the dedup key live in replay/text.py.

Crash safety: every mutating call is one transaction (rollback journal, synchronous=FULL);
`snapshot` and `restore` copy the file atomically (replay/store.py, which holds the schema).

Text: strings are stored exactly, except lone surrogate code points (not valid Unicode,
cannot be written as UTF-8, and cannot come from a tokenizer or a UTF-8 file), which are
replaced by U+FFFD so that arbitrary Python strings never crash the pool.
"""

from __future__ import annotations

import json
import math
import random
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssp.config import ReplayConfig
from ssp.replay import store
from ssp.replay.store import PoolError
from ssp.replay.text import clean_text, hash_digest
from ssp.replay.ucb import LiveIndex, rank_top, ucb_array, ucb_score

RETIRE_TOLERANCE = 1e-9  # r̄ = (0.4 + 1 + 1) / 3 computes as 0.7999999999999999; it has reached 0.8
_CHUNK = 500  # parameters per `IN (...)` query (SQLite's default limit is 32766; stay small)

_ENTRY_COLUMNS = (
    "id, goal, attack, responses, score, rationale, n_replays, mean_reward, admit_reward, "
    "last_reward, first_step, last_step, retired, revivals, text_hash"
)


_JSON = json.JSONEncoder(ensure_ascii=False)  # reused: json.dumps(..., ensure_ascii=False) builds one per call


@dataclass
class Candidate:
    """A Defender failure proposed for the pool by the trainer."""

    goal: str
    attack: str
    responses: list[str]
    score: float
    rationale: str
    mean_reward: float


@dataclass
class PoolEntry:
    id: int
    goal: str
    attack: str
    responses: list[str]
    score: float
    rationale: str
    n_replays: int
    mean_reward: float
    admit_reward: float
    last_reward: float | None
    first_step: int
    last_step: int
    retired: bool
    revivals: int
    text_hash: str
    ucb: float = field(default=float("nan"))  # u_i at the time the entry was read

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- the pool


class ExperiencePool:
    """The experience pool, one SQLite file.

    One writer at a time: the in-memory mirror assumes no other process writes the file
    (readers such as `ssp pool show` open it with ``readonly=True``). Not thread-safe."""

    def __init__(self, path: str | Path, cfg: ReplayConfig, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.cfg = cfg
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = store.connect(self.path, readonly)
        self._live = LiveIndex()
        self._buf_u = self._buf_b = np.empty(0)  # scratch for _scores
        self._load_live()

    # -- lifecycle

    def _transaction(self) -> store.Transaction:
        if self.readonly:
            raise PoolError(f"{self.path}: opened read-only")
        return store.Transaction(self._db)

    def _load_live(self) -> None:
        rows = self._db.execute("SELECT id, n_replays, mean_reward FROM entries WHERE retired = 0").fetchall()
        if rows:
            arr = np.array(rows, dtype=np.float64)
            self._live.reset(arr[:, 0].astype(np.int64), arr[:, 1], arr[:, 2])
        else:
            self._live.reset(np.empty(0, np.int64), np.empty(0), np.empty(0))
        self._meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> ExperiencePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        """Number of live (non-retired) entries."""
        return self._live.size

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise PoolError("the experience pool is closed")
        return self._conn

    @property
    def total_replays(self) -> int:
        """N: replay events so far."""
        return int(self._meta["total_replays"])

    # -- scores

    def _scores(self, c: float) -> np.ndarray:
        """u_i of the live entries, in index order. Valid until the next call (reused buffers)."""
        size = self._live.size
        if len(self._buf_u) < size:
            cap = max(size, 2 * len(self._buf_u), 1024)
            self._buf_u, self._buf_b = np.empty(cap), np.empty(cap)
        return ucb_array(
            self._live.r, self._live.n, self.total_replays, c, out=self._buf_u[:size], scratch=self._buf_b[:size]
        )

    def _top_positions(self, scores: np.ndarray, k: int) -> np.ndarray:
        """Positions of the k highest scores in the live index, best first; ties: older id first."""
        return rank_top(scores, self._live.ids, k)

    def _fetch(self, ids: Sequence[int]) -> list[PoolEntry]:
        """Entries by id, in the order given (ids that do not exist are left out)."""
        ids = [int(i) for i in ids]
        found: dict[int, PoolEntry] = {}
        for s in range(0, len(ids), _CHUNK):
            chunk = ids[s : s + _CHUNK]
            q = f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE id IN ({','.join('?' * len(chunk))})"
            for row in self._db.execute(q, chunk):
                e = self._row_to_entry(row)
                found[e.id] = e
        return [found[i] for i in ids if i in found]

    def _row_to_entry(self, row: tuple) -> PoolEntry:
        id_, goal, attack, responses, score, rationale, n, mean, admit, last_r, first, last, retired, revivals, h = row
        return PoolEntry(
            id=id_,
            goal=goal,
            attack=attack,
            responses=json.loads(responses),
            score=score,
            rationale=rationale,
            n_replays=n,
            mean_reward=mean,
            admit_reward=admit,
            last_reward=last_r,
            first_step=first,
            last_step=last,
            retired=bool(retired),
            revivals=revivals,
            text_hash=h.hex(),
            ucb=ucb_score(mean, n, self.total_replays, self.cfg.exploration),
        )

    # -- the trainer's API

    def admit(self, candidates: Iterable[Candidate], step: int) -> int:
        """Admit the failures with mean_reward < τ (dedup, revival, capacity); one transaction.

        Returns the number admitted (new entries plus revived ones, including any that the
        capacity bound evicted again in the same call; see stats()["evicted_total"])."""
        tau = self.cfg.admit_below
        step = int(step)
        prepared: dict[bytes, tuple] = {}  # text hash digest -> row values, first one wins
        for i, c in enumerate(candidates):
            r = _check_reward(c.mean_reward, f"candidate {i}: mean_reward")
            score = float(c.score)
            if not math.isfinite(score):
                raise ValueError(f"candidate {i}: score must be finite, got {c.score!r}")
            if not r < tau:
                continue
            goal, attack, rationale = clean_text(c.goal), clean_text(c.attack), clean_text(c.rationale)
            if isinstance(c.responses, str) or not all(isinstance(x, str) for x in c.responses):
                raise TypeError(f"candidate {i}: responses must be a list of str")
            responses = _JSON.encode([clean_text(x) for x in c.responses])
            h = hash_digest(goal, attack)
            if h not in prepared:
                prepared[h] = (h, r, step, score, goal, attack, responses, rationale)
        if not prepared:
            return 0

        with self._transaction() as db:
            hashes = list(prepared)
            existing: dict[bytes, tuple[int, int]] = {}
            for s in range(0, len(hashes), _CHUNK):
                chunk = hashes[s : s + _CHUNK]
                q = f"SELECT text_hash, id, retired FROM entries WHERE text_hash IN ({','.join('?' * len(chunk))})"
                for h, id_, retired in db.execute(q, chunk):
                    existing[h] = (id_, retired)
            new_rows = [prepared[h] for h in hashes if h not in existing]
            revive = [(existing[h][0], prepared[h]) for h in hashes if h in existing and existing[h][1]]

            seq_row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'entries'").fetchone()
            before = seq_row[0] if seq_row else 0
            db.executemany(
                "INSERT INTO entries (text_hash, mean_reward, admit_reward, first_step, last_step, score, "
                "goal, attack, responses, rationale) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(h, r, r, st, st, sc, g, a, resp, rat) for (h, r, st, sc, g, a, resp, rat) in new_rows],
            )
            new_ids = [row[0] for row in db.execute("SELECT id FROM entries WHERE id > ? ORDER BY id", (before,))]
            if len(new_ids) != len(new_rows):
                raise PoolError("inconsistent insert: row count mismatch")
            db.executemany(
                "UPDATE entries SET retired = 0, n_replays = 0, mean_reward = ?, admit_reward = ?, last_reward = NULL, "
                "last_step = ?, score = ?, responses = ?, rationale = ?, revivals = revivals + 1 WHERE id = ?",
                [(r, r, st, sc, resp, rat, id_) for id_, (_h, r, st, sc, _g, _a, resp, rat) in revive],
            )
            added_ids = new_ids + [id_ for id_, _ in revive]
            added_r = [row[1] for row in new_rows] + [row[1] for _, row in revive]

            # capacity: what the live set will be after this admission, then evict its lowest u_i
            ids_all = np.concatenate([self._live.ids, np.asarray(added_ids, dtype=np.int64)])
            evict_ids: list[int] = []
            excess = len(ids_all) - self.cfg.capacity
            if excess > 0:
                n_all = np.concatenate([self._live.n, np.zeros(len(added_ids))])
                r_all = np.concatenate([self._live.r, np.asarray(added_r, dtype=np.float64)])
                u = ucb_array(r_all, n_all, self.total_replays, self.cfg.exploration)
                # the tail of the selection order: lowest u first, ties newest id first
                tail = rank_top(-u, -ids_all, excess)
                evict_ids = [int(x) for x in ids_all[tail]]
                for s in range(0, len(evict_ids), _CHUNK):
                    id_chunk = evict_ids[s : s + _CHUNK]
                    db.execute(f"DELETE FROM entries WHERE id IN ({','.join('?' * len(id_chunk))})", id_chunk)
            meta = {
                "admitted_total": self._meta["admitted_total"] + len(added_ids),
                "revived_total": self._meta["revived_total"] + len(revive),
                "evicted_total": self._meta["evicted_total"] + len(evict_ids),
            }
            db.executemany("UPDATE meta SET value = ? WHERE key = ?", [(v, k) for k, v in meta.items()])

        # committed: mirror it
        self._meta.update(meta)
        self._live.add(added_ids, [0.0] * len(added_ids), added_r)
        if evict_ids:
            self._live.remove(evict_ids)
        return len(added_ids)

    def select(self, k: int, rng: random.Random) -> list[PoolEntry]:
        """k live entries to replay, by `cfg.mode` (see module docstring); best first."""
        mode = self.cfg.mode
        if mode == "none" or k <= 0 or self._live.size == 0:
            return []
        if mode == "uniform":
            pos = rng.sample(range(self._live.size), min(k, self._live.size))
            return self._fetch(self._live.ids[pos].tolist())
        c = self.cfg.exploration if mode == "ucb" else 0.0
        if mode not in ("ucb", "priority"):
            raise ValueError(f"unknown replay mode {mode!r}")
        top = self._top_positions(self._scores(c), k)
        return self._fetch(self._live.ids[top].tolist())

    def update(self, results: Mapping[int, Sequence[float]], step: int) -> int:
        """Record one replay event per entry: the fresh defender rewards of this step.

        Ids that are no longer live (evicted or retired since `select`) and empty reward lists
        are ignored. Returns the number of entries updated."""
        events: list[tuple[int, float]] = []
        for id_, rewards in results.items():
            rewards = [_check_reward(x, f"entry {id_}: reward") for x in rewards]
            if rewards:
                events.append((int(id_), math.fsum(rewards) / len(rewards)))
        if not events:
            return 0
        ids = np.asarray([e[0] for e in events], dtype=np.int64)
        pos, ok = self._live.lookup(ids)
        events = [e for e, good in zip(events, ok.tolist()) if good]
        pos = pos[ok]
        if not events:
            return 0

        step = int(step)
        n_old = self._live.n[pos]
        r_old = self._live.r[pos]
        x = np.asarray([e[1] for e in events], dtype=np.float64)
        n_new = n_old + 1.0
        r_new = r_old + (x - r_old) / (n_old + 2.0)
        retire = (r_new >= self.cfg.retire_at - RETIRE_TOLERANCE) & (n_new >= self.cfg.retire_after)
        rows = [
            (int(nn), float(rn), float(xx), step, int(rt), id_)
            for (id_, _), nn, rn, xx, rt in zip(events, n_new.tolist(), r_new.tolist(), x.tolist(), retire.tolist())
        ]
        meta = {
            "total_replays": self._meta["total_replays"] + len(events),
            "retired_total": self._meta["retired_total"] + int(retire.sum()),
        }
        with self._transaction() as db:
            db.executemany(
                "UPDATE entries SET n_replays = ?, mean_reward = ?, last_reward = ?, last_step = ?, retired = ? "
                "WHERE id = ?",
                rows,
            )
            db.executemany("UPDATE meta SET value = ? WHERE key = ?", [(v, k) for k, v in meta.items()])

        self._meta.update(meta)
        self._live.n[pos] = n_new
        self._live.r[pos] = r_new
        if retire.any():
            self._live.remove(ids[ok][retire].tolist())
        return len(events)

    # -- reading

    def get(self, id_: int) -> PoolEntry | None:
        got = self._fetch([id_])
        return got[0] if got else None

    def top(self, n: int) -> list[PoolEntry]:
        """The n live entries with the highest u_i (with c = cfg.exploration, in any mode)."""
        pos = self._top_positions(self._scores(self.cfg.exploration), n)
        return self._fetch(self._live.ids[pos].tolist())

    def all_entries(self) -> Iterator[PoolEntry]:
        """Every entry in the file, retired ones included, by id."""
        cur = self._db.execute(f"SELECT {_ENTRY_COLUMNS} FROM entries ORDER BY id")
        while True:
            rows = cur.fetchmany(1000)
            if not rows:
                return
            for row in rows:
                yield self._row_to_entry(row)

    def stats(self) -> dict[str, Any]:
        """Pool metrics; means and max are None for an empty pool."""
        _ = self._db  # raises PoolError when closed
        live = self._live
        # entries retire (retired_total) and only retired ones revive; retired ones are never evicted
        retired = self._meta["retired_total"] - self._meta["revived_total"]
        has = live.size > 0
        return {
            "size": live.size,
            "retired": int(retired),
            "admitted_total": int(self._meta["admitted_total"]),
            "revived_total": int(self._meta["revived_total"]),
            "evicted_total": int(self._meta["evicted_total"]),
            "retired_total": int(self._meta["retired_total"]),
            "replays_total": self.total_replays,
            "mean_reward": float(live.r.mean()) if has else None,
            "mean_replays": float(live.n.mean()) if has else None,
            "max_ucb": float(self._scores(self.cfg.exploration).max()) if has else None,
        }

    # -- checkpoints

    def snapshot(self, dest: str | Path) -> Path:
        """Write a consistent copy of the pool to `dest` (a checkpoint's copy)."""
        return store.snapshot(self._db, Path(dest))

    @classmethod
    def restore(cls, snapshot: str | Path, path: str | Path, cfg: ReplayConfig) -> ExperiencePool:
        """Replace the pool file at `path` by a copy of `snapshot` (atomically, stale journals removed) and open it.

        Close any pool object open on `path` first (it would keep reading the replaced file)."""
        store.restore(Path(snapshot), Path(path))
        return cls(path, cfg)

    @staticmethod
    def delete_files(path: str | Path) -> None:
        """Remove a pool file and its journals (e.g. to restart a run that has no checkpoint)."""
        store.delete_files(Path(path))


def _check_reward(x: object, what: str) -> float:
    try:
        v = float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{what}: not a number: {x!r}") from None
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError(f"{what}: must be a finite number in [0, 1], got {x!r}")
    return v
