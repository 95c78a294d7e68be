"""Seed prompts for the game: the package's own sets, or any .txt/.csv/.jsonl file with a column option."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ssp.records import RecordsError, read_located, read_text

if TYPE_CHECKING:
    from ssp.config import GameConfig, HeldOutConfig

BUILTIN = {"harmful": "harmful_goals.txt", "benign": "benign_instructions.txt", "borderline": "borderline_safe.jsonl"}
DEFAULT_COLUMNS = ("goal", "behavior", "Behavior", "instruction", "prompt", "text")


class SeedError(ValueError):
    """A seed file problem; the message names the file, line or column."""


@dataclass(frozen=True)
class Seed:
    text: str
    category: str = ""


def load_seeds(spec: str, kind: str, column: str | None = None) -> list[Seed]:
    """`spec` is 'builtin' or a path. Text files: one seed a line, optional `category<TAB>text`, `#` comments."""
    if spec == "builtin":
        resource = resources.files("ssp") / "data" / BUILTIN[kind]
        if BUILTIN[kind].endswith(".jsonl"):
            with resources.as_file(resource) as path:
                seeds = _parse_records(read_located(path), path, column)
        else:
            seeds = _parse_text(resource.read_text(encoding="utf-8"), f"<builtin {BUILTIN[kind]}>")
        source = f"builtin {kind} seeds"
    else:
        path = Path(spec)
        if not path.is_file():
            raise SeedError(f"{kind} seed file not found: {path}")
        try:
            if path.suffix.lower() in (".csv", ".jsonl", ".json"):  # any other file is seed text (category<TAB>text)
                seeds = _parse_records(read_located(path), path, column)
            else:
                seeds = _parse_text(read_text(path), str(path))
        except RecordsError as e:
            raise SeedError(str(e)) from None
        source = str(path)
    if not seeds:
        raise SeedError(f"{source}: no {kind} seeds found (file is empty or all lines are comments)")
    return seeds


def _parse_text(text: str, source: str) -> list[Seed]:
    seeds = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        category, sep, body = line.partition("\t")
        seeds.append(Seed(body.strip(), category.strip()) if sep else Seed(line))
    return [s for s in seeds if s.text]


def _pick_column(fields: list[str], column: str | None, source: Path) -> str:
    if column is not None:
        if column not in fields:
            raise SeedError(f"{source}: column {column!r} not found; columns are {fields}")
        return column
    for candidate in DEFAULT_COLUMNS:
        if candidate in fields:
            return candidate
    raise SeedError(f"{source}: no seed column found among {fields}; set the column option (e.g. game.harmful_column)")


def _category(row: dict) -> str:
    for key in ("category", "SemanticCategory", "Category"):
        if row.get(key):
            return str(row[key])
    return ""


def _parse_records(rows: list[tuple[str, dict]], path: Path, column: str | None) -> list[Seed]:
    seeds = []
    for where, row in rows:
        col = _pick_column([k for k in row if k is not None], column, path)  # None: a CSV row's extra cells
        value = row.get(col)
        if not isinstance(value, str):
            raise SeedError(f"{path}: {where}: column {col!r} is not text")
        if value.strip():
            seeds.append(Seed(value.strip(), _category(row)))
    return seeds


def normalise(text: str) -> str:
    """Lower-case words only: the key under which two prompts count as the same."""
    return " ".join(re.findall(r"\w+", text.lower()))


def held_out_texts(path: str, column: str | None, held_out: HeldOutConfig) -> set[str]:
    """Normalised prompts of the evaluation slice `ssp eval --benchmark generic:SUITE=PATH --limit N --seed S`
    chooses, found with the evaluation's own loader and item choice, so the two cannot drift apart."""
    from ssp.eval.benchmarks import BenchmarkError, limit_suite, load_suites, parse_benchmark_spec

    options = {"kind": "benign", **({"prompt": column} if column else {})}
    try:
        spec = parse_benchmark_spec(f"generic:{held_out.suite}={path}", {held_out.suite: options})
        (suite,) = load_suites(spec)
    except BenchmarkError as e:
        raise SeedError(f"game.benign_held_out: {e}") from None
    return {normalise(item.prompt) for item in limit_suite(suite, held_out.limit, held_out.seed).items}


def load_benign_seeds(game: GameConfig) -> list[Seed]:
    """`game.benign_seeds` without the evaluation slice named by `game.benign_held_out`."""
    seeds = load_seeds(game.benign_seeds, "benign", game.benign_column)
    if game.benign_held_out is None:
        return seeds
    if game.benign_seeds == "builtin":
        raise SeedError(
            "game.benign_held_out needs game.benign_seeds to be a file (the builtin seeds are never evaluated on)"
        )
    held = held_out_texts(game.benign_seeds, game.benign_column, game.benign_held_out)
    # A text file's `category<TAB>text` line is one prompt to the evaluation's reader, the text alone to ours.
    kept = [s for s in seeds if normalise(s.text) not in held and normalise(f"{s.category} {s.text}") not in held]
    if not kept:
        raise SeedError(
            f"{game.benign_seeds}: every benign seed is in the held-out evaluation slice "
            f"(game.benign_held_out.limit={game.benign_held_out.limit})"
        )
    return kept


def load_borderline_seeds(game: GameConfig) -> list[Seed]:
    """`game.borderline_seeds` (none when unset)."""
    if game.borderline_seeds is None:
        return []
    return load_seeds(game.borderline_seeds, "borderline", game.borderline_column)


def load_benign_pool(game: GameConfig) -> list[Seed]:
    """What self-play answers plainly: the benign seeds (less the held-out slice) and the borderline-safe
    seeds, each prompt once."""
    pool: dict[str, Seed] = {}
    for seed in load_benign_seeds(game) + load_borderline_seeds(game):
        pool.setdefault(normalise(seed.text), seed)
    return list(pool.values())


def split_borderline(pool: list[Seed], borderline: list[Seed]) -> tuple[list[Seed], list[Seed]]:
    """The pool's (borderline-safe, other) prompts, matched by normalised text; once per run, not per step."""
    marked = {normalise(s.text) for s in borderline}
    return [s for s in pool if normalise(s.text) in marked], [s for s in pool if normalise(s.text) not in marked]


def draw_benign(
    pool: list[Seed], edgy: list[Seed], plain: list[Seed], n: int, share: float | None, rng: random.Random
) -> list[Seed]:
    """The step's `n` benign prompts: uniformly from the pool, or `share` of them (rounded) from its borderline-safe
    part `edgy` and the rest from the other prompts `plain` (`split_borderline`), so that the contrast set is seen
    at a rate the pool's mix does not decide (225 borderline-safe prompts among ~1,700 would come up in about one
    draw in eight)."""
    if not pool or n == 0:
        return []
    if share is None or not edgy:
        return rng.sample(pool, min(n, len(pool)))
    k = min(round(n * share), len(edgy))
    return rng.sample(edgy, k) + rng.sample(plain, min(n - k, len(plain)))
