"""Waiting for a task to change without a poll loop per request: one watcher per process reads the state of every
watched task in one statement about twice a second (while anything is watched) and sets an event per waiting
request; a change made in this process (the worker's own progress and outcome) wakes its waiters at once.

GET /api/v1/tasks/{id}?wait=N and the SSE stream of /events both wait here. A request starts watching *before* it
reads the task and keeps watching until it is done, and the watcher's first look at a task wakes its waiters too:
so a change that lands between the request's read and the watcher's first look (a fast task finishing on another
node), or between two of the request's waits, is never missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable

from sdapi.background.wakeup import Wakeup
from sdapi.errors import SdapiError
from sdapi.store import TaskStore

logger = logging.getLogger(__name__)

# How often the watcher reads the watched tasks' states (changes made by other processes show up this late).
WATCH_SECONDS = 0.5


class TaskWatch:
    def __init__(self, task_store: TaskStore) -> None:
        self._tasks = task_store
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._seen: dict[str, str] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._wakeup = Wakeup()

    def changed(self, task_id: str) -> None:
        """A task changed in this process: wake whoever waits for it."""
        for event in self._waiters.get(task_id, ()):
            event.set()

    @contextlib.asynccontextmanager
    async def watching(self, task_id: str) -> AsyncIterator[Callable[[float], Awaitable[bool]]]:
        """Watch `task_id` for the block; yields `next_change(timeout)`, which waits until the task has changed
        since the block began or since its last True (whichever is later), or `timeout` seconds pass, and says
        which. Enter it before reading the task."""
        event = asyncio.Event()
        self._waiters[task_id].add(event)
        self._ensure_running()

        async def next_change(timeout: float) -> bool:
            try:
                async with asyncio.timeout(max(timeout, 0.0)):
                    await event.wait()
            except TimeoutError:
                return False
            event.clear()
            return True

        try:
            yield next_change
        finally:
            waiters = self._waiters.get(task_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[task_id]
                    self._seen.pop(task_id, None)

    def _ensure_running(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="sdapi-watch")

    async def _run(self) -> None:
        while self._waiters:
            try:
                states = await self._tasks.states(list(self._waiters))
            except SdapiError as error:
                logger.warning("task watch: %s", error.message)
                states = {}
            for task_id, state in states.items():
                # The first look counts as a change: the waiters read the task before it, perhaps just before a
                # change this look is the first to see. A needless wake costs them one read.
                if self._seen.get(task_id) != state:
                    self.changed(task_id)
                self._seen[task_id] = state
            await self._wakeup.sleep(WATCH_SECONDS)

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
