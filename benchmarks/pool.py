"""Experience-pool benchmark (issue 6, item 1c): insert, UCB top-k and stats update at 10^3 … 10^6 entries.

    python benchmarks/pool.py            # 10^3, 10^4, 10^5, 10^6 entries (~1.5 GB temporary disk)
    python benchmarks/pool.py --quick    # 10^3, 10^4 (CI smoke run; headline top-k at 10^6 is null)

One pool grows through the sizes, filled by `ExperiencePool.admit` in batches of 10,000
synthetic failures of realistic length (goal ~80 characters, attack ~400, two responses ~300
each, rationale ~100). At each size it measures, as medians over repeats:
  select_ucb_ms   `select(k=8)` in ucb mode (the per-step call), also priority and uniform
  update_ms       `update()` of the 8 selected entries with 2 fresh rewards each (one transaction)
  admit8_ms       a per-step admission of 8 failures; admit8_evict_ms the same at capacity (evicts 8)
  stats_ms        `stats()`
  open_s          re-opening the file (loads the in-memory mirror of the live statistics)
  snapshot_s      `snapshot()` (SQLite backup API), as a checkpoint does
Writes benchmarks/results/pool.json with the headline keys `topk_ms_at_1e6` and `insert_per_s`
(entries per second over the whole fill, batched). No timing assertions: this is a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    from ssp.config import ReplayConfig
    from ssp.replay import Candidate, ExperiencePool
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from ssp.config import ReplayConfig
    from ssp.replay import Candidate, ExperiencePool

TARGET_TOPK_MS = 50.0
TARGET_INSERT_PER_S = 10_000.0
K = 8
BATCH = 10_000

_WORDS = (
    "the a how to make build explain step detailed guide write story character pretend you are an "
    "expert chemist hacker ignore previous instructions hypothetically for research purposes only "
    "novel scene describe process list materials sure here is first then finally however cannot"
).split()


def _blocks(rng: random.Random, n: int, words: int) -> list[str]:
    return [" ".join(rng.choices(_WORDS, k=words)) for _ in range(n)]


class Synth:
    """Unique, realistic-length failures; text blocks are pre-generated so generation is cheap."""

    def __init__(self, seed: int = 0) -> None:
        rng = random.Random(seed)
        self.goals = _blocks(rng, 997, 12)
        self.attacks = _blocks(rng, 1009, 60)
        self.responses = _blocks(rng, 1013, 45)
        self.rationales = _blocks(rng, 101, 15)
        self.rng = rng
        self.i = 0

    def batch(self, n: int) -> list[Candidate]:
        out = []
        for _ in range(n):
            i = self.i
            self.i += 1
            out.append(
                Candidate(
                    goal=f"goal {i}: {self.goals[i % 997]}",
                    attack=f"{self.attacks[i % 1009]} (variant {i})",
                    responses=[self.responses[i % 1013], self.responses[(i * 7) % 1013]],
                    score=float(self.rng.randint(3, 5)),
                    rationale=self.rationales[i % 101],
                    mean_reward=self.rng.random() * 0.5,
                )
            )
        return out


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def machine_info() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "sqlite": sqlite3.sqlite_version,
        # the machine may be shared: the 1-minute load average when the benchmark started
        "loadavg_1min_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def run(sizes: list[int], repeats: int, workdir: Path) -> tuple[list[dict], float]:
    cfg = ReplayConfig(mode="ucb", exploration=0.5, capacity=10**8, retire_at=0.99, retire_after=1000)
    path = workdir / "pool.sqlite"
    synth = Synth()
    pool = ExperiencePool(path, cfg)
    rng = random.Random(1)
    results = []
    fill_time = 0.0
    step = 0
    try:
        for size in sizes:
            added, t_stage, batch_rates = 0, 0.0, []
            while len(pool) < size:
                cands = synth.batch(min(BATCH, size - len(pool)))
                t0 = time.perf_counter()
                got = pool.admit(cands, step)
                dt = time.perf_counter() - t0
                assert got == len(cands), "synthetic failures must all be admitted"
                added, t_stage = added + got, t_stage + dt
                batch_rates.append(got / dt)
                step += 1
            fill_time += t_stage
            # spread the replay counts a little, as a real run would (not timed)
            some = rng.sample(range(1, synth.i + 1), min(1000, len(pool)))
            pool.update({i: [rng.random()] for i in some}, step)
            step += 1

            def do_select(mode: str) -> list:
                pool.cfg = cfg.model_copy(update={"mode": mode})
                try:
                    return pool.select(K, rng)
                finally:
                    pool.cfg = cfg

            sel_ucb = _median_ms(lambda: do_select("ucb"), repeats)
            sel_pri = _median_ms(lambda: do_select("priority"), repeats)
            sel_uni = _median_ms(lambda: do_select("uniform"), repeats)

            def one_step_update() -> None:
                chosen = [e.id for e in pool.select(K, rng)]
                t0 = time.perf_counter()
                pool.update({i: [rng.random(), rng.random()] for i in chosen}, step)
                upd.append((time.perf_counter() - t0) * 1e3)

            upd: list[float] = []
            for _ in range(repeats):
                one_step_update()
            stats_ms = _median_ms(pool.stats, repeats)

            admit_times = []
            for _ in range(max(3, repeats // 3)):
                cands = synth.batch(K)
                t0 = time.perf_counter()
                pool.admit(cands, step)
                admit_times.append((time.perf_counter() - t0) * 1e3)
            pool.cfg = cfg.model_copy(update={"capacity": len(pool)})
            evict_times = []
            for _ in range(max(3, repeats // 3)):
                cands = synth.batch(K)
                t0 = time.perf_counter()
                pool.admit(cands, step)
                evict_times.append((time.perf_counter() - t0) * 1e3)
            pool.cfg = cfg
            live = len(pool)

            pool.close()
            t0 = time.perf_counter()
            pool = ExperiencePool(path, cfg)
            open_s = time.perf_counter() - t0
            snap = workdir / "snapshot.sqlite"
            t0 = time.perf_counter()
            pool.snapshot(snap)
            snapshot_s = time.perf_counter() - t0
            snap.unlink()

            results.append(
                {
                    "size": size,
                    "live_entries": live,
                    "insert_per_s": added / t_stage if t_stage else None,
                    "insert_batch_median_per_s": statistics.median(batch_rates) if batch_rates else None,
                    "select_ucb_ms": sel_ucb,
                    "select_priority_ms": sel_pri,
                    "select_uniform_ms": sel_uni,
                    "update_ms": statistics.median(upd),
                    "admit8_ms": statistics.median(admit_times),
                    "admit8_evict_ms": statistics.median(evict_times),
                    "stats_ms": stats_ms,
                    "open_s": open_s,
                    "snapshot_s": snapshot_s,
                    "file_mb": path.stat().st_size / 2**20,
                    "replays_total": pool.total_replays,
                }
            )
            print(f"  {size:>9,} entries measured", file=sys.stderr, flush=True)
    finally:
        pool.close()
    total_inserted = sizes[-1]  # filled from empty to the largest size by batched admission
    return results, total_inserted / fill_time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="sizes 10^3 and 10^4 only (CI smoke run)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats per timing (default 21; quick 7)")
    ap.add_argument("--dir", type=Path, default=None, help="where the temporary pool lives (default: system temp)")
    ap.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results" / "pool.json")
    args = ap.parse_args(argv)
    sizes = [10**3, 10**4] if args.quick else [10**3, 10**4, 10**5, 10**6]
    repeats = args.repeats or (7 if args.quick else 21)

    machine = machine_info()
    workdir = Path(tempfile.mkdtemp(prefix="ssp-pool-bench-", dir=args.dir))
    try:
        t0 = time.perf_counter()
        results, insert_per_s = run(sizes, repeats, workdir)
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    at_1e6 = next((r for r in results if r["size"] == 10**6), None)
    topk_1e6 = at_1e6["select_ucb_ms"] if at_1e6 else None
    report = {
        "benchmark": "pool",
        "headline": {"topk_ms_at_1e6": topk_1e6, "insert_per_s": insert_per_s},
        "topk_ms_at_1e6": topk_1e6,
        "insert_per_s": insert_per_s,
        "targets": {"topk_ms_at_1e6": TARGET_TOPK_MS, "insert_per_s": TARGET_INSERT_PER_S},
        "meets_targets": {
            "topk_ms_at_1e6": None if topk_1e6 is None else topk_1e6 <= TARGET_TOPK_MS,
            "insert_per_s": insert_per_s >= TARGET_INSERT_PER_S,
        },
        "machine": machine,
        "settings": {
            "quick": args.quick,
            "sizes": sizes,
            "repeats": repeats,
            "k": K,
            "insert_batch": BATCH,
            "mode": "ucb",
            "exploration": 0.5,
            "entry_text_chars": {"goal": "~80", "attack": "~400", "responses": "2 x ~300", "rationale": "~100"},
            "sqlite": "rollback journal, synchronous=FULL, one transaction per call",
            "insert_per_s_definition": "entries / seconds in admit(), filling one pool from 0 to the largest size "
            "in batches of 10,000 (dedup lookups, JSON, hashing and capacity check included; "
            "candidate generation excluded)",
            "statistic": "median over repeats",
            "wall_s": wall,
        },
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, args.output)
    _print_table(report)
    print(f"wrote {args.output}")
    return 0


def _print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="Experience pool (medians; ms unless stated)")
    cols = [
        ("entries", "size", "{:,}"),
        ("insert/s", "insert_per_s", "{:,.0f}"),
        ("top-k ucb", "select_ucb_ms", "{:.2f}"),
        ("priority", "select_priority_ms", "{:.2f}"),
        ("uniform", "select_uniform_ms", "{:.2f}"),
        ("update k=8", "update_ms", "{:.2f}"),
        ("admit 8", "admit8_ms", "{:.2f}"),
        ("admit 8 +evict", "admit8_evict_ms", "{:.2f}"),
        ("stats", "stats_ms", "{:.2f}"),
        ("open s", "open_s", "{:.2f}"),
        ("snapshot s", "snapshot_s", "{:.2f}"),
        ("file MB", "file_mb", "{:.0f}"),
    ]
    for name, *_ in cols:
        t.add_column(name, justify="right")
    for r in report["results"]:
        t.add_row(*(fmt.format(r[key]) if r[key] is not None else "-" for _, key, fmt in cols))
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(t)
    h, tg = report["headline"], report["targets"]
    topk = "not measured (--quick)" if h["topk_ms_at_1e6"] is None else f"{h['topk_ms_at_1e6']:.2f} ms"
    console.print(f"top-k (k={K}) at 10^6: {topk}  (target ≤ {tg['topk_ms_at_1e6']:.0f} ms)")
    console.print(f"batched insert: {h['insert_per_s']:,.0f} entries/s  (target ≥ {tg['insert_per_s']:,.0f})")


if __name__ == "__main__":
    sys.exit(main())
