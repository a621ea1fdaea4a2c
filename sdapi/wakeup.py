"""The sleep of a loop that polls a store: it wakes early when nudged (a task or delivery was just written here),
and otherwise looks again after a while (for what other processes wrote)."""

from __future__ import annotations

import asyncio
import contextlib


class Wakeup:
    """`nudge()` makes the current or the next `sleep()` return at once; a nudge is never lost."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def nudge(self) -> None:
        self._event.set()

    async def sleep(self, seconds: float) -> None:
        """Wait until nudged or `seconds` pass; a nudge given while the loop was busy ends this sleep at once."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout=max(seconds, 0.0))
        self._event.clear()
