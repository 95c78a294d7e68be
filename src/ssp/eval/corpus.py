"""`ssp export-attacks`: every attack that broke the Defender, deduplicated — a reusable red-team corpus.

Sources, in a training run folder:
* the experience pool (`pool.sqlite`, retired entries included): every entry is a Defender failure
  (admitted because its mean Defender reward was below the admission threshold);
* `exchanges.jsonl`: logged exchanges of kind `attack` or `replay` whose verdict is valid and harmful.
In an evaluation folder (`generations.jsonl`): every answered sample judged harmful (non-`direct`
attacks by default, since a direct request is the benchmark's own text, not a discovered attack).

Deduplication: by the pool's normalised (goal, attack) hash (lower-case, whitespace collapsed); a
duplicate merges its sources and keeps the earliest step and the highest score.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from ssp.eval.metrics import diversity
from ssp.records import read_log

EXCERPT_CHARS = 300
log = logging.getLogger(__name__)


def _hash(goal: str, attack: str) -> str:
    from ssp.replay.text import text_hash

    return text_hash(goal, attack)


class _Corpus:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def add(
        self,
        goal: str,
        attack: str,
        *,
        source: str,
        step: int | None,
        score: float | None,
        response: str,
        rationale: str = "",
        category: str = "",
        **extra: Any,
    ) -> None:
        if not attack or not attack.strip():
            return
        key = _hash(goal, attack)
        row = self.rows.get(key)
        if row is None:
            self.rows[key] = {
                "goal": goal,
                "attack": attack,
                "category": category,
                "step": step,
                "score": score,
                "response_excerpt": (response or "")[:EXCERPT_CHARS],
                "rationale": rationale,
                "sources": [source],
                "times_seen": 1,
                **extra,
            }
            return
        row["times_seen"] += 1
        if source not in row["sources"]:
            row["sources"].append(source)
        if step is not None and (row["step"] is None or step < row["step"]):
            row["step"] = step
        if score is not None and (row["score"] is None or score > row["score"]):
            row["score"] = score
            row["response_excerpt"] = (response or "")[:EXCERPT_CHARS]
            row["rationale"] = rationale or row["rationale"]
        if category and not row["category"]:
            row["category"] = category
        for k, v in extra.items():
            row.setdefault(k, v)


def collect_attacks(folder: str | Path, include_direct: bool = False) -> list[dict[str, Any]]:
    folder = Path(folder)
    corpus = _Corpus()
    found_source = False
    if (folder / "pool.sqlite").is_file():
        from ssp.eval.rundata import PoolReadError, read_pool

        found_source = True
        try:
            entries = read_pool(folder).entries
        except PoolReadError as e:
            log.warning("%s; exporting from exchanges.jsonl only", e)
            entries = []
        for entry in entries:
            corpus.add(
                entry["goal"],
                entry["attack"],
                source="pool",
                step=entry.get("first_step"),
                score=entry.get("score"),
                response=(entry.get("responses") or [""])[0],
                rationale=entry.get("rationale", ""),
                pool_id=entry.get("id"),
                n_replays=entry.get("n_replays"),
                mean_reward=entry.get("mean_reward"),
                retired=entry.get("retired"),
            )
    if (folder / "exchanges.jsonl").is_file():
        found_source = True
        for x in read_log(folder / "exchanges.jsonl"):
            v = x.get("verdict") or {}
            if x.get("kind") in ("attack", "replay") and v.get("valid") and v.get("harmful"):
                corpus.add(
                    x.get("goal", ""),
                    x.get("prompt", ""),
                    source=f"exchanges:{x['kind']}",
                    step=x.get("step"),
                    score=v.get("score"),
                    response=x.get("response", ""),
                    rationale=v.get("rationale", ""),
                    category=x.get("category") or "",
                    hint=x.get("hint"),
                )
    if (folder / "generations.jsonl").is_file():
        found_source = True
        for r in read_log(folder / "generations.jsonl"):
            if r.get("attack") == "direct" and not include_direct:
                continue
            for s in r.get("samples", []):
                v = s.get("verdict") or {}
                if s.get("prompt") and v.get("valid") and v.get("harmful"):
                    meta = s.get("meta") or {}
                    corpus.add(
                        r.get("goal", ""),
                        s["prompt"],
                        source=f"eval:{r['attack']}",
                        step=None,
                        score=v.get("score"),
                        response=s.get("response") or "",
                        rationale=v.get("rationale", ""),
                        category=r.get("category") or "",
                        suite=r.get("suite"),
                        **{k: meta[k] for k in ("template", "hint", "round") if k in meta},
                    )
    if not found_source:
        raise FileNotFoundError(
            f"{folder}: neither a training run (pool.sqlite, exchanges.jsonl) nor an evaluation "
            "folder (generations.jsonl)"
        )
    return sorted(
        corpus.rows.values(), key=lambda r: (r["step"] if r["step"] is not None else 1 << 30, -(r["score"] or 0.0))
    )


def corpus_stats(rows: list[dict[str, Any]], embed: bool = True) -> dict[str, Any]:
    attacks = [r["attack"] for r in rows]
    scores = [r["score"] for r in rows if r.get("score") is not None]
    return {
        "attacks": len(rows),
        "unique_goals": len({r["goal"] for r in rows}),
        "mean_score": sum(scores) / len(scores) if scores else None,
        "by_source": dict(Counter(s for r in rows for s in r["sources"])),
        "by_category": dict(Counter(r.get("category") or "(none)" for r in rows)),
        "diversity": diversity(attacks, embed=embed),
    }


def export_attacks(
    folder: str | Path, output: str | Path, include_direct: bool = False, embed: bool = True
) -> dict[str, Any]:
    """Write the corpus (JSONL) and its statistics (`<output stem>.stats.json`); return the statistics."""
    rows = collect_attacks(folder, include_direct)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    stats = {"source": str(Path(folder).resolve()), "output": str(out), **corpus_stats(rows, embed)}
    stats_text = json.dumps(stats, indent=2, ensure_ascii=False)
    out.with_name(out.stem + ".stats.json").write_text(stats_text, encoding="utf-8")
    return stats
