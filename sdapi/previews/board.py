"""Where the latest preview of each running task waits for its readers.

Always in this process's memory (the worker posts, and an API node in the same process reads it there: `sdapi
serve` on SQLite never writes a preview anywhere else). Where readers may be other processes (an API node apart from
its workers, or any PostgreSQL deployment, where several nodes serve one queue) the worker also writes it to the
database's `previews` table, one row per task replaced in place (UNLOGGED on PostgreSQL), which the API nodes'
task watch reads with the task's state: a new preview wakes their streams as a progress change does.

Why a table rather than the NOTIFY that wakes other nodes: a NOTIFY payload is limited to 8000 bytes, and a 256-pixel
JPEG preview is larger once base64-encoded (docs/benchmarks.md has the measured sizes); the table has no limit and
needs no listener, and the watch already polls.

Only the latest preview of a task is kept; a reader that misses one sees the next. Losing a preview is fine: a
failing write is logged and the run goes on.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from sdapi.config import PreviewsConfig
from sdapi.errors import SdapiError
from sdapi.previews import Preview
from sdapi.store import PreviewStore

logger = logging.getLogger(__name__)

# At most this many tasks' previews in memory (a worker runs a batch at a time; an API node reads its own).
MEMORY_ENTRIES = 256


class PreviewBoard:
    def __init__(self, settings: PreviewsConfig, shared: PreviewStore | None) -> None:
        """`shared`: the database's previews, where other processes read; None when only this process does."""
        self.settings = settings
        self._shared = shared
        self._memory: OrderedDict[str, Preview] = OrderedDict()

    async def post(self, task_id: str, preview: Preview) -> None:
        self._memory[task_id] = preview
        self._memory.move_to_end(task_id)
        while len(self._memory) > MEMORY_ENTRIES:
            self._memory.popitem(last=False)
        if self._shared is not None:
            try:
                await self._shared.put(task_id, preview, self.settings.keep_seconds)
            except SdapiError as error:
                logger.warning("task %s: a preview was not shared: %s", task_id, error.message)

    async def latest(self, task_id: str) -> Preview | None:
        """The task's latest preview: this process's own, else the database's (posted by another process)."""
        found = self._memory.get(task_id)
        if found is not None or self._shared is None:
            return found
        try:
            return await self._shared.get(task_id, self.settings.keep_seconds)
        except SdapiError as error:
            logger.warning("task %s: reading its preview failed: %s", task_id, error.message)
            return None

    async def clear(self, task_id: str) -> None:
        """The task's run ended: its preview is gone everywhere."""
        self._memory.pop(task_id, None)
        if self._shared is not None:
            try:
                await self._shared.delete(task_id)
            except SdapiError as error:
                logger.warning("task %s: its preview stays until it expires: %s", task_id, error.message)
