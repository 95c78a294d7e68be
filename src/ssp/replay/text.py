"""Text handling of the experience pool: lone surrogates replaced, normalisation, and the dedup key."""

from __future__ import annotations

import hashlib
import re

_SURROGATES = re.compile("[\ud800-\udfff]")


def clean_text(s: str) -> str:
    """`s` unchanged unless it holds lone surrogates, which become U+FFFD."""
    if not isinstance(s, str):
        raise TypeError(f"expected str, got {type(s).__name__}")
    if s.isascii():
        return s
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return _SURROGATES.sub("\ufffd", s)


def normalise_text(s: str) -> str:
    """Lower-case, runs of whitespace (str.isspace) collapsed to one space, stripped."""
    return " ".join(clean_text(s).lower().split())


def text_hash(goal: str, attack: str) -> str:
    """Dedup key: sha256 (hex) of the normalised goal and attack, length-prefixed so the
    boundary between them is unambiguous: f"{len(g)}:{g}{a}" in UTF-8."""
    return hash_digest(goal, attack).hex()


def hash_digest(goal: str, attack: str) -> bytes:
    g, a = normalise_text(goal), normalise_text(attack)
    return hashlib.sha256(f"{len(g)}:{g}{a}".encode()).digest()
