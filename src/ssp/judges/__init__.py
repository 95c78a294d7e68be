"""Judges: (goal, prompt, response) -> Verdict. See `ssp.judges.base`."""

from ssp.judges.base import (  # noqa: F401
    Judge,
    JudgeInput,
    Verdict,
    available_judges,
    build_judge,
    register_judge,
)
