"""Judges: (goal, prompt, response) -> Verdict. See `ssp.judges.base` and `ssp.judges.registry`."""

from ssp.judges.base import Judge, JudgeInput, Verdict  # noqa: F401
from ssp.judges.registry import available_judges, build_judge, register_judge  # noqa: F401
