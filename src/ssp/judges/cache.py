"""The verdict cache usable with any judge.

Verdict cache: `judge.options.cache: PATH` on *any* judge (handled by `build_judge`) keeps verdicts
in an SQLite file keyed by sha256 of (judge name + settings, goal, prompt, response, context). Only
valid verdicts are cached (an invalid one is retried next time). Settings that do not change a
verdict (API key variable, concurrency, timeouts) are not part of the key. No pickle: verdicts are
stored as JSON.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from ssp.judges.base import Judge, JudgeInput, Verdict, judge_settings


def jsonable_verdict(v: Verdict) -> dict[str, Any]:
    """The verdict as JSON-safe fields (NaN score -> null)."""
    d = v.to_dict()
    if d["score"] != d["score"]:  # NaN → null
        d["score"] = None
    return d


def cache_key(settings: dict[str, Any], item: JudgeInput) -> str:
    payload = json.dumps(
        {
            "judge": settings,
            "goal": item.goal,
            "prompt": item.prompt,
            "response": item.response,
            "context": item.context,
        },
        sort_keys=True,
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(payload.encode("utf-8", errors="surrogatepass")).hexdigest()


class VerdictCache:
    """SQLite key → verdict JSON. Safe to share between threads and processes (WAL)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False)
        with self._lock, self._conn:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, verdict TEXT NOT NULL, "
                "judge TEXT NOT NULL, created REAL NOT NULL)"
            )

    def get_many(self, keys: list[str]) -> dict[str, Verdict]:
        out: dict[str, Verdict] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                q = f"SELECT key, verdict FROM verdicts WHERE key IN ({','.join('?' * len(chunk))})"
                for key, text in self._conn.execute(q, chunk):
                    try:
                        d = json.loads(text)
                        out[key] = Verdict(**{**d, "score": float(d["score"])})
                    except (ValueError, TypeError, KeyError):
                        continue  # a damaged row is a miss
        return out

    def put_many(self, rows: list[tuple[str, Verdict, str]]) -> None:
        now = time.time()
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?)",
                [(k, json.dumps(jsonable_verdict(v), ensure_ascii=False), name, now) for k, v, name in rows],
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class CachedJudge:
    """Wraps a judge; verdicts for inputs seen before (same settings) come from the cache."""

    def __init__(self, inner: Judge, cache: VerdictCache) -> None:
        self.inner = inner
        self.cache = cache
        self.name = inner.name
        self._settings = judge_settings(inner)
        self.hits = 0
        self.misses = 0

    def settings(self) -> dict[str, Any]:
        return self._settings

    def judge(self, items: list[JudgeInput]) -> list[Verdict]:
        keys = [cache_key(self._settings, it) for it in items]
        found = self.cache.get_many(list(dict.fromkeys(keys)))
        todo = [i for i, k in enumerate(keys) if k not in found]
        self.hits += len(items) - len(todo)
        self.misses += len(todo)
        fresh: dict[int, Verdict] = {}
        if todo:
            verdicts = self.inner.judge([items[i] for i in todo])
            fresh = dict(zip(todo, verdicts))
            self.cache.put_many([(keys[i], v, self.name) for i, v in fresh.items() if v.valid])
        return [found[k] if i not in fresh else fresh[i] for i, k in enumerate(keys)]
