"""Durable-file helpers shared by the experience pool and the checkpoints: fsync of files and folders, and the
read-only SQLite URI of a path."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk (before it is renamed into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (so a rename inside it survives a power cut); a no-op where the platform or the file
    system cannot open or sync a folder."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sqlite_readonly_uri(path: Path) -> str:
    """`file:` URI opening `path` read-only; characters with a meaning in URIs ('?', '#', '%', spaces) are
    percent-escaped by pathlib, which SQLite decodes."""
    return Path(path).resolve().as_uri() + "?mode=ro"
