"""The reaper: returns tasks whose lease ran out to the queue, or fails them once their attempts are spent.

Every node runs one (API nodes too: when every worker died, someone must still fail or requeue their tasks). It is
idempotent: each reap is one fenced write that only changes a task still processing under the same, still expired
lease, so two reapers, or a reaper racing the worker's own renewal or completion, never write twice.
"""

from __future__ import annotations

import asyncio
import logging
import time

from sdapi.background.wakeup import BatchLoop, Signals
from sdapi.core import tasks
from sdapi.core.deliveries import delivery_for
from sdapi.errors import SdapiError
from sdapi.observability import metrics
from sdapi.observability.logs import task_context
from sdapi.storage import ImageStorage
from sdapi.store import Lease, TaskStore

logger = logging.getLogger(__name__)

# Expired leases handled per pass; the next pass follows at once while there were this many.
BATCH = 50


class Reaper:
    def __init__(
        self,
        task_store: TaskStore,
        max_attempts: int,
        lease_seconds: float,
        signals: Signals,
        storage: ImageStorage,
    ) -> None:
        self._tasks = task_store
        self._max_attempts = max_attempts
        # Looked at three times per lease: an expired task waits at most a third of a lease for its reap.
        self._loop = BatchLoop("reaper", lease_seconds / 3, self.reap_once, BATCH)
        self._signals = signals
        self._storage = storage

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def reap_once(self) -> int:
        """Handle the expired leases there are now; return how many were found."""
        expired = await self._tasks.expired(BATCH)
        for lease in expired:
            recovered = tasks.recover_interrupted(lease.task, self._max_attempts)
            delivery = delivery_for(recovered, time.time())
            if not await self._tasks.reap(lease, recovered, delivery):
                continue  # renewed, finished or reaped by another node meanwhile
            await self._delete_staged(lease)
            with task_context(lease.task.id, lease.task.request_id):
                logger.warning(
                    "task %s: its worker's lease expired during attempt %d; now %s",
                    lease.task.id,
                    lease.task.attempts,
                    recovered.status,
                )
            if recovered.error_code is not None:
                metrics.TASKS_FAILED.labels(dialect=recovered.dialect, error_code=recovered.error_code.value).inc()
            if recovered.status.is_terminal:
                if delivery is not None:
                    self._signals.delivery_due()
            else:
                self._signals.task_added()
        return len(expired)

    async def _delete_staged(self, lease: Lease) -> None:
        """The images the lost run staged (and may have uploaded) belong to no task now: delete them."""
        if not lease.staged_keys:
            return
        try:
            await asyncio.to_thread(self._storage.delete, lease.staged_keys)
        except SdapiError as error:
            logger.error("task %s: deleting the images of its lost run failed: %s", lease.task.id, error.message)
