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


@pytest.fixture
def one_torch_thread():
    """In-process training on one thread (2-core machines shared with other test runs); restored after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA
