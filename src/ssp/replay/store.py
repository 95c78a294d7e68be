"""The experience pool's SQLite file: schema, connections, transactions, and the snapshot/restore copies that
checkpoints use. What the rows mean (admission, UCB, retirement) is in replay/pool.py.

Crash safety: rollback journal (WAL off: one file to snapshot), synchronous=FULL, one transaction per mutating
call; copies go through the SQLite backup API into a temporary file that is fsynced and renamed into place.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ssp.fsutil import fsync_dir, fsync_file, sqlite_readonly_uri

SCHEMA_VERSION = 1
CACHE_KIB = 65536  # SQLite page cache per connection (64 MiB): keeps the dedup index hot at 10^6 entries

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    text_hash   BLOB    NOT NULL UNIQUE,  -- 32-byte sha256 digest (hex in the API)
    retired     INTEGER NOT NULL DEFAULT 0,
    n_replays   INTEGER NOT NULL DEFAULT 0,
    mean_reward REAL    NOT NULL,
    admit_reward REAL   NOT NULL,
    last_reward REAL,
    first_step  INTEGER NOT NULL,
    last_step   INTEGER NOT NULL,
    revivals    INTEGER NOT NULL DEFAULT 0,
    score       REAL    NOT NULL,
    goal        TEXT    NOT NULL,
    attack      TEXT    NOT NULL,
    responses   TEXT    NOT NULL,
    rationale   TEXT    NOT NULL
);
-- covering index: opening the pool reads the live statistics without touching the text pages;
-- keyed by id first, so that inserts append to it instead of touching pages all over it
CREATE INDEX IF NOT EXISTS entries_stats ON entries (id, retired, n_replays, mean_reward);
"""

META_KEYS = ("schema_version", "total_replays", "admitted_total", "evicted_total", "revived_total", "retired_total")


class PoolError(RuntimeError):
    """The pool file is missing, from another schema version, or used after close."""


class Transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error (a failed COMMIT included)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            try:
                self.conn.execute("COMMIT")
                return
            except BaseException:  # e.g. disk full: leave no transaction open behind us
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        if self.conn.in_transaction:  # SQLite may already have rolled back on its own
            self.conn.execute("ROLLBACK")


def check_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a file of another schema version; a file that is no database at all raises sqlite3.DatabaseError."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None or row[0] != SCHEMA_VERSION:
        raise PoolError(f"{path}: pool schema version {row[0] if row else None}, expected {SCHEMA_VERSION}")


def connect(path: Path, readonly: bool) -> sqlite3.Connection:
    """An open, schema-checked connection; a writable one creates the file and its tables if missing."""
    if readonly:
        if not path.exists():
            raise PoolError(f"experience pool not found: {path}")
        conn = sqlite3.connect(sqlite_readonly_uri(path), uri=True, isolation_level=None, timeout=30.0)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
    try:
        try:
            if not readonly:
                conn.execute("PRAGMA journal_mode=DELETE")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
                with Transaction(conn):
                    for stmt in SCHEMA.strip().split(";"):
                        if stmt.strip():
                            conn.execute(stmt)
                    conn.executemany(
                        "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                        [(k, SCHEMA_VERSION if k == "schema_version" else 0) for k in META_KEYS],
                    )
            check_schema(conn, path)
        except sqlite3.DatabaseError as e:
            raise PoolError(f"{path}: not an experience pool ({e})") from None
    except BaseException:
        conn.close()
        raise
    return conn


def snapshot(conn: sqlite3.Connection, dest: Path) -> Path:
    """Write a consistent copy of the open database to `dest` (SQLite backup API; tmp file + rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    out = sqlite3.connect(str(tmp), isolation_level=None)
    try:
        conn.backup(out)
        out.execute("PRAGMA journal_mode=DELETE")
    finally:
        out.close()
    fsync_file(tmp)
    os.replace(tmp, dest)
    fsync_dir(dest.parent)
    return dest


def restore(snapshot_path: Path, path: Path) -> None:
    """Replace the file at `path` by a copy of `snapshot_path` (atomically).

    Any stale rollback journal next to `path` is removed first: SQLite would otherwise "roll back" the old file's
    unfinished transaction onto the restored file."""
    if not snapshot_path.is_file():
        raise PoolError(f"pool snapshot not found: {snapshot_path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".restore.tmp")
    tmp.unlink(missing_ok=True)
    try:
        src = sqlite3.connect(sqlite_readonly_uri(snapshot_path), uri=True, isolation_level=None)
        try:
            check_schema(src, snapshot_path)
            out = sqlite3.connect(str(tmp), isolation_level=None)
            try:
                src.backup(out)  # page-consistent copy; also proves the snapshot is a readable database
                out.execute("PRAGMA journal_mode=DELETE")
            finally:
                out.close()
        finally:
            src.close()
    except sqlite3.DatabaseError as e:
        tmp.unlink(missing_ok=True)
        raise PoolError(f"{snapshot_path}: not a readable pool snapshot ({e})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_file(tmp)
    for suffix in ("-journal", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def delete_files(path: Path) -> None:
    """Remove a pool file and its journals."""
    for suffix in ("-journal", "-wal", "-shm", ""):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    if path.parent.exists():
        fsync_dir(path.parent)
