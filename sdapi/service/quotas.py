"""Per-key submit rates (api.keys[].requests_per_minute): a sliding one-minute window per caller, kept in this
process. With several API nodes each counts its own requests, so a key may submit up to N times the rate across N
nodes behind a load balancer. Per-key pending limits are exact instead: the store counts them (TaskStore.add)."""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable

WINDOW_SECONDS = 60.0


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._recent: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)

    def admit(self, name: str, per_minute: int) -> int | None:
        """Count one request of `name`; None when within `per_minute`, else the seconds until one is allowed."""
        now = self._clock()
        recent = self._recent[name]
        while recent and recent[0] <= now - WINDOW_SECONDS:
            recent.popleft()
        if len(recent) >= per_minute:
            return max(1, math.ceil(recent[0] + WINDOW_SECONDS - now))
        recent.append(now)
        return None
