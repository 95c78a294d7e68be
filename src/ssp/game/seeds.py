"""Seed prompts for the game: the package's own sets, or any .txt/.csv/.jsonl file with a column option."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ssp.records import RecordsError, read_located, read_text

BUILTIN = {"harmful": "harmful_goals.txt", "benign": "benign_instructions.txt"}
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
