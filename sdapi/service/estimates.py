"""When a pending task will start: the work ahead of it (megapixel-steps, from the store) times the measured seconds
per megapixel-step (a moving average per engine, shared through the store), spread over the live workers."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sdapi.store import NodeRegistry, ThroughputLog

# How long one reading of the rates and the live workers serves estimates: polls stay one statement each.
CACHE_SECONDS = 2.0


class StartEstimator:
    def __init__(
        self,
        throughput: ThroughputLog,
        nodes: NodeRegistry,
        lease_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._throughput = throughput
        self._nodes = nodes
        self._lease_seconds = lease_seconds
        self._clock = clock
        self._read_at: float | None = None
        self._seconds_per_work: float | None = None
        self._workers = 1

    async def estimate(self, work_ahead: float) -> datetime | None:
        """When a task with `work_ahead` megapixel-steps before it should start; None until a run was measured."""
        if self._read_at is None or self._clock() - self._read_at > CACHE_SECONDS:
            rates = await self._throughput.rates()
            live = await self._nodes.live(self._lease_seconds)
            # Engines measured so far, equally weighted: which one a queued task will use is decided when it runs.
            self._seconds_per_work = sum(rates.values()) / len(rates) if rates else None
            self._workers = max(1, sum(node.role.runs_worker and node.model_loaded for node in live))
            self._read_at = self._clock()
        if self._seconds_per_work is None:
            return None
        return datetime.now(UTC) + timedelta(seconds=work_ahead * self._seconds_per_work / self._workers)
