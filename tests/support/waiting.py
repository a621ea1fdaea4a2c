"""Waiting on a condition with a generous deadline, never a fixed sleep: a busy machine is slow, an idle one fast."""

from __future__ import annotations

import time
from collections.abc import Callable


def eventually(condition: Callable[[], bool], timeout: float = 60.0, what: str = "the condition") -> None:
    """Return once `condition()` is true, checking every 0.1 s; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g}s")
        time.sleep(0.1)
