"""Reflective Experience Replay: the durable experience pool (SQLite) and its UCB selection."""

from ssp.replay.pool import (
    SCHEMA_VERSION,
    Candidate,
    ExperiencePool,
    PoolEntry,
    PoolError,
    clean_text,
    normalise_text,
    text_hash,
    ucb_score,
)

__all__ = [
    "SCHEMA_VERSION",
    "Candidate",
    "ExperiencePool",
    "PoolEntry",
    "PoolError",
    "clean_text",
    "normalise_text",
    "text_hash",
    "ucb_score",
]
