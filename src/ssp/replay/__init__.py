"""Reflective Experience Replay: the durable experience pool and its UCB selection.

pool.py: what the pool does (admission, dedup, UCB selection, running means, retirement, capacity);
store.py: its SQLite file (schema, transactions, snapshot/restore); ucb.py: scores and top-k over the live entries;
text.py: text cleaning and the dedup key.
"""

from ssp.replay.pool import Candidate, ExperiencePool, PoolEntry
from ssp.replay.store import SCHEMA_VERSION, PoolError
from ssp.replay.text import clean_text, normalise_text, text_hash
from ssp.replay.ucb import ucb_score

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
