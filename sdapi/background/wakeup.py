"""How the loops of a process wait and wake: the sleep of a loop that polls a store, which wakes early when nudged
(a task or delivery was just written here) and otherwise looks again after a while (for what other processes
wrote), and the signals that give those nudges."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from sdapi.errors import SdapiError

logger = logging.getLogger(__name__)


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


class BatchLoop:
    """A background loop over a store: runs `batch()` again at once while it returns `full` (more is waiting), then
    sleeps `interval` seconds (or until nudged). A failing store is logged and tried again after the sleep."""

    def __init__(self, name: str, interval: float, batch: Callable[[], Awaitable[int]], full: int) -> None:
        self._name = name
        self._interval = interval
        self._batch = batch
        self._full = full
        self._wakeup = Wakeup()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sdapi-{self._name}")

    def nudge(self) -> None:
        self._wakeup.nudge()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                while await self._batch() == self._full:
                    pass
            except SdapiError as error:
                logger.error("%s: %s", self._name, error.message)
            await self._wakeup.sleep(self._interval)


Listener = Callable[[], None]


class Signals:
    """The one way the parts of a process tell each other that something was just written, so the part that acts on
    it looks now rather than at its next poll: a task was added (the worker), a delivery is due (the callback
    sender), a cancel was asked for (the worker's running task), a task changed (waiting clients), the worker's
    model loaded (the LoRA library and the registry entry). The store's change feed (LISTEN/NOTIFY) raises the same
    signals for what other processes wrote.

    A signal without listeners does nothing: an API node has no worker to wake."""

    def __init__(self) -> None:
        self._task_added: list[Listener] = []
        self._delivery_due: list[Listener] = []
        self._cancel_requested: list[Listener] = []
        self._task_changed: list[Callable[[str], None]] = []
        self._model_loaded: list[Listener] = []

    def on_task_added(self, listener: Listener) -> None:
        self._task_added.append(listener)

    def on_delivery_due(self, listener: Listener) -> None:
        self._delivery_due.append(listener)

    def on_cancel_requested(self, listener: Listener) -> None:
        self._cancel_requested.append(listener)

    def on_task_changed(self, listener: Callable[[str], None]) -> None:
        self._task_changed.append(listener)

    def on_model_loaded(self, listener: Listener) -> None:
        self._model_loaded.append(listener)

    def task_added(self) -> None:
        for listener in self._task_added:
            listener()

    def delivery_due(self) -> None:
        for listener in self._delivery_due:
            listener()

    def cancel_requested(self) -> None:
        for listener in self._cancel_requested:
            listener()

    def task_changed(self, task_id: str) -> None:
        for listener in self._task_changed:
            listener(task_id)

    def model_loaded(self) -> None:
        """The worker's default model finished loading (listeners may read files: call it off the event loop)."""
        for listener in self._model_loaded:
            listener()
