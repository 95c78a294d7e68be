"""Seed prompts for the game: the package's own sets, or any .txt/.csv/.jsonl file with a column option."""

from __future__ import annotations

import codecs
import csv
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

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
            text = path.read_text(encoding="utf-8-sig")  # spreadsheet exports start with a BOM
        except UnicodeDecodeError as e:
            data = path.read_bytes()
            start = e.start + len(codecs.BOM_UTF8) * data.startswith(codecs.BOM_UTF8)  # offset counts after the BOM
            line = data[:start].count(b"\n") + 1
            raise SeedError(f"{path}: line {line}: not valid UTF-8 (byte offset {start})") from None
        suffix = path.suffix.lower()
        if suffix == ".csv":
            seeds = _parse_csv(text, path, column)
        elif suffix in (".jsonl", ".json"):
            seeds = _parse_jsonl(text, path, column)
        else:
            seeds = _parse_text(text, str(path))
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


def _parse_csv(text: str, path: Path, column: str | None) -> list[Seed]:
    reader = csv.DictReader(text.splitlines())
    try:  # csv.Error: e.g. a field over the csv module's size limit
        if not reader.fieldnames:
            raise SeedError(f"{path}: empty CSV (no header row)")
        col = _pick_column(list(reader.fieldnames), column, path)
        return [Seed(row[col].strip(), _category(row)) for row in reader if (row.get(col) or "").strip()]
    except csv.Error as e:  # reader.reader: DictReader.line_num is not updated for the failing row
        raise SeedError(f"{path}: line {reader.reader.line_num}: {e}") from None


def _parse_jsonl(text: str, path: Path, column: str | None) -> list[Seed]:
    seeds = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SeedError(f"{path}: line {number}: invalid JSON ({e.msg})") from None
        except RecursionError:
            raise SeedError(f"{path}: line {number}: invalid JSON (nested too deeply)") from None
        if not isinstance(row, dict):
            raise SeedError(f"{path}: line {number}: expected a JSON object")
        col = _pick_column(list(row), column, path)
        value = row.get(col)
        if not isinstance(value, str):
            raise SeedError(f"{path}: line {number}: column {col!r} is not text")
        if value.strip():
            seeds.append(Seed(value.strip(), _category(row)))
    return seeds
