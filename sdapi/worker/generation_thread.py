"""The one long-lived thread that runs the engine's work, off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


# The thread's name (in logs, profiles and the test that holds storage I/O off it).
GENERATION_THREAD_NAME = "sdapi-generation"
# Every generation thread of this process, for generation_in_progress().
_THREADS: weakref.WeakSet[GenerationThread] = weakref.WeakSet()


def generation_in_progress() -> bool:
    """Whether some generation thread of this process is inside a job now (one a shutdown left running)."""
    return any(thread.busy for thread in list(_THREADS))


class GenerationThread:
    """One long-lived daemon thread that runs the engine's work, one job at a time.

    Long-lived, because torch's OpenMP thread team belongs to the thread that starts it: a new thread per task
    would build (and warm) a new team every time. A daemon, because when a shutdown's grace period runs out the
    process must be able to exit with a generation still running (the task is then re-run after the restart).
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any], asyncio.AbstractEventLoop]] = (
            queue.SimpleQueue()
        )
        self._busy = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=GENERATION_THREAD_NAME, daemon=True)
        self._thread.start()
        _THREADS.add(self)

    @property
    def busy(self) -> bool:
        """Whether a job is running now."""
        return self._busy.is_set()

    def submit(self, function: Callable[[], T]) -> asyncio.Future[T]:
        """Queue `function`; the returned future (of the running loop) gets its result or exception. It runs in a
        copy of the caller's context, as asyncio.to_thread would: its log lines keep the task's ids."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((functools.partial(contextvars.copy_context().run, function), future, loop))
        return future

    def _serve(self) -> None:
        while True:
            function, future, loop = self._jobs.get()
            outcome: Callable[[], None]
            self._busy.set()
            try:
                result = function()
            except BaseException as error:  # handed to the awaiting coroutine, which decides
                outcome = functools.partial(_settle, future, None, error)
            else:
                outcome = functools.partial(_settle, future, result, None)
            finally:
                self._busy.clear()
            # The loop may have closed during shutdown; then nobody waits for this result any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(outcome)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
