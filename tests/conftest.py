"""Shared fixtures: the tiny random model config (seconds) and paths to ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssp.config import SSPConfig, load_config

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def tiny_cfg() -> SSPConfig:
    return load_config(REPO / "configs" / "tiny.yaml")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA
