"""`ssp train` in a child process that stops itself at a named point, so a test can kill it exactly there.

    python -m tests.crash_child MARKER MODULE:ATTR[.ATTR] NTH [UNDER] -- SSP_ARGS...

Before the NTH call of the named function (counting only calls with an argument whose text contains UNDER, when
given) the child writes MARKER and sends itself SIGSTOP; tests/test_reliability_crash.py waits for MARKER and then
sends SIGKILL. The kill point is thus a place in the code, not a moment, and does not depend on machine speed.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import signal
import sys
from pathlib import Path


def arm(marker: Path, target: str, nth: int, under: str | None) -> None:
    module_name, qualname = target.split(":")
    owner = importlib.import_module(module_name)
    *outer, name = qualname.split(".")
    for part in outer:
        owner = getattr(owner, part)
    raw = inspect.getattr_static(owner, name)
    wrapper_type = type(raw) if isinstance(raw, (classmethod, staticmethod)) else None
    func = raw.__func__ if wrapper_type else raw
    calls = 0

    @functools.wraps(func)
    def stop_before(*args, **kwargs):
        nonlocal calls
        if under is None or any(under in str(a) for a in args):
            calls += 1
            if calls == nth:
                marker.write_text(target)
                os.kill(os.getpid(), signal.SIGSTOP)
        return func(*args, **kwargs)

    setattr(owner, name, wrapper_type(stop_before) if wrapper_type else stop_before)


def main() -> None:
    split = sys.argv.index("--")
    marker, target, nth, *under = sys.argv[1:split]
    arm(Path(marker), target, int(nth), under[0] if under else None)
    from ssp.cli import app

    sys.argv = ["ssp", *sys.argv[split + 1 :]]
    app()


if __name__ == "__main__":
    main()
