"""Polling until a condition holds, failing the test with what was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(
    cond: Callable[[], bool],
    timeout: float = 10.0,
    what: str | Callable[[], str] = "condition",
    step: float = 0.02,
) -> None:
    """Call ``cond`` every ``step`` seconds until it is true; AssertionError after ``timeout``
    seconds, naming ``what`` (a callable is called then, to describe the state at that moment)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")
