"""Reading a file of records (CSV, TSV, JSON Lines, JSON, Parquet or plain text) into dicts.

Seed files, benchmark files and judge tables all come through here, so every format reads the same
way and every error is a `RecordsError` that names the file and, where there is one, the line.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from pathlib import Path
from typing import Any

#: Suffixes read as tables of named columns; any other file is text, one `prompt` a line.
TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet")


class RecordsError(ValueError):
    """A file that cannot be read as records; the message names the file (and line)."""


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a file, chosen by suffix (see `read_located`)."""
    return [row for _, row in read_located(path)]


def read_located(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """Records with where each one is ("line 3", "item 3", "row 3"), for a caller's own checks to cite.

    .csv/.tsv: a header row, then one record a row (missing trailing cells read as "").
    .jsonl/.ndjson: one object a line; blank lines are skipped.
    .json: a list of objects, an object wrapping exactly one such list ({"data": [...]}), a single
    object, or JSON Lines.  .parquet: via pandas.  Anything else: text, {"prompt": line} for each
    non-blank line that does not start with '#'.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet(path)
    text = read_text(path)
    if suffix in (".csv", ".tsv"):
        return _csv(text, path, "\t" if suffix == ".tsv" else ",")
    if suffix in (".jsonl", ".ndjson"):
        return _json_lines(text, path)
    if suffix == ".json":
        return _json(text, path)
    return [
        (f"line {n}", {"prompt": line.strip()})
        for n, line in enumerate(_lines(text), 1)
        if line.strip() and not line.startswith("#")
    ]


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The objects of a JSON Lines log this program appends to (metrics, exchanges, generations).

    A crash can cut the last line off, so lines that are not a JSON object are skipped, not fatal;
    a missing file is no records. For input files use `read_records`, which reports bad lines.
    """
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in _lines(path.read_text(encoding="utf-8")):
        try:
            row = json.loads(line) if line.strip() else None
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_text(path: str | Path) -> str:
    """A file's UTF-8 text without the BOM spreadsheet exports start with; bad bytes are located by line."""
    path = Path(path)
    _check_file(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        data = path.read_bytes()
        start = e.start + len(codecs.BOM_UTF8) * data.startswith(codecs.BOM_UTF8)  # e.start counts after the BOM
        line = data[:start].count(b"\n") + 1
        raise RecordsError(f"{path}: line {line}: not valid UTF-8 (byte offset {start})") from None


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise RecordsError(f"{path}: {'not a file' if path.exists() else 'file not found'}")


def _lines(text: str) -> list[str]:
    # Only "\n" ends a line (reading turned "\r\n" and "\r" into it): str.splitlines would also split at
    # U+2028 and other characters that JSON strings written with ensure_ascii=False may hold.
    return text.split("\n")


def _csv(text: str, path: Path, delimiter: str) -> list[tuple[str, dict[str, Any]]]:
    # newline="": a quoted cell keeps its line breaks (HarmBench's multi-line ContextString).
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, restval="")
    try:  # csv.Error: e.g. a cell over the csv module's size limit
        if not reader.fieldnames:
            raise RecordsError(f"{path}: empty CSV (no header row)")
        return [(f"line {reader.line_num}", row) for row in reader]
    except csv.Error as e:  # reader.reader: DictReader.line_num is not updated for the failing row
        raise RecordsError(f"{path}: line {reader.reader.line_num}: {e}") from None


def _object(value: Any, path: Path, where: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise RecordsError(f"{path}: {where}: expected a JSON object, got {type(value).__name__}")
    return where, value


def _json_lines(text: str, path: Path) -> list[tuple[str, dict[str, Any]]]:
    rows = []
    for n, line in enumerate(_lines(text), 1):
        if not line.strip():
            continue
        try:
            rows.append(_object(json.loads(line), path, f"line {n}"))
        except json.JSONDecodeError as e:
            raise RecordsError(f"{path}: line {n}: invalid JSON ({e.msg})") from None
        except RecursionError:  # json's decoder recurses once per nesting level
            raise RecordsError(f"{path}: line {n}: invalid JSON (nested too deeply)") from None
    return rows


def _json(text: str, path: Path) -> list[tuple[str, dict[str, Any]]]:
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # a second value after the first: JSON Lines
            return _json_lines(text, path)
        raise RecordsError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
    except RecursionError:
        raise RecordsError(f"{path}: invalid JSON (nested too deeply)") from None
    if isinstance(data, dict):  # {"data": [...]} exports; any other object is one record
        lists = [v for v in data.values() if isinstance(v, list)]
        wrapped = len(lists) == 1 and all(isinstance(r, dict) for r in lists[0])
        data = lists[0] if wrapped else [data]
    if not isinstance(data, list):
        raise RecordsError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    return [_object(row, path, f"item {n}") for n, row in enumerate(data, 1)]


def _parquet(path: Path) -> list[tuple[str, dict[str, Any]]]:
    _check_file(path)
    import pandas as pd

    try:
        rows = pd.read_parquet(path).to_dict(orient="records")
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise RecordsError(f"{path}: not a readable Parquet file ({e})") from None
    return [(f"row {n}", row) for n, row in enumerate(rows, 1)]
