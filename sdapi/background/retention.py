"""The retention sweep (retention.days): finished tasks older than that are deleted with their images, init images
and delivery records. Every node runs the loop; the store lets one node sweep at a time."""

from __future__ import annotations

import asyncio
import logging

from sdapi.background.wakeup import BatchLoop
from sdapi.errors import SdapiError
from sdapi.storage import ImageStorage
from sdapi.store import TaskStore

logger = logging.getLogger(__name__)

# Tasks deleted per transaction; the next batch follows at once while a batch was full.
BATCH = 200
# The sweep runs ten times per retention period, at most hourly and at least every second.
MIN_INTERVAL_SECONDS = 1.0
MAX_INTERVAL_SECONDS = 3600.0


class RetentionSweeper:
    def __init__(self, task_store: TaskStore, storage: ImageStorage, days: float) -> None:
        self._tasks = task_store
        self._storage = storage
        self._keep_seconds = days * 86400
        interval = min(max(self._keep_seconds / 10, MIN_INTERVAL_SECONDS), MAX_INTERVAL_SECONDS)
        self._loop = BatchLoop("retention", interval, self.sweep_once, BATCH)

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def sweep_once(self) -> int:
        """Delete one batch of expired tasks and their images; return how many tasks went."""
        removed = await self._tasks.sweep(self._keep_seconds, BATCH)
        keys = [key for task in removed for key in task.result_keys]
        if keys:
            try:
                await asyncio.to_thread(self._storage.delete, keys)
            except SdapiError as error:  # the rows are gone: the images stay as orphans, said here
                logger.error("retention: deleting %d images failed: %s", len(keys), error.message)
        if removed:
            logger.info("retention: deleted %d finished tasks and %d images", len(removed), len(keys))
        return len(removed)
