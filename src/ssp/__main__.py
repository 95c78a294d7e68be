"""`python -m ssp` (used by `accelerate launch -m ssp train ...`)."""

from ssp.cli import app

app()
