"""The in-process worker: takes pending tasks one at a time, runs the engine off the event loop,
stores the images and records the result."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sdapi import tasks
from sdapi.config import Config
from sdapi.deliveries import new_delivery
from sdapi.engines import Engine
from sdapi.errors import GenerationFailed, ModelLoadFailed, SdapiError, StorageError
from sdapi.images import CONTENT_TYPES, encode_image, open_init_image
from sdapi.storage import ImageStorage
from sdapi.store import TaskStore
from sdapi.tasks import Task, TaskStatus

logger = logging.getLogger(__name__)

T = TypeVar("T")

GENERIC_FAILURE = "生成过程中发生错误"
# How often the idle worker looks at the store even without a wake-up (tasks added by another process).
IDLE_POLL_SECONDS = 1.0


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
        self._thread = threading.Thread(target=self._serve, name="sdapi-generation", daemon=True)
        self._thread.start()

    def submit(self, function: Callable[[], T]) -> asyncio.Future[T]:
        """Queue `function`; the returned future (of the running loop) gets its result or exception."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((function, future, loop))
        return future

    def _serve(self) -> None:
        while True:
            function, future, loop = self._jobs.get()
            outcome: Callable[[], None]
            try:
                result = function()
            except BaseException as error:  # handed to the awaiting coroutine, which decides
                outcome = functools.partial(_settle, future, None, error)
            else:
                outcome = functools.partial(_settle, future, result, None)
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


class Worker:
    """Runs tasks from the store through the engine, one at a time."""

    def __init__(
        self,
        config: Config,
        store: TaskStore,
        engine: Engine,
        storage: ImageStorage,
        on_delivery: Callable[[], None] = lambda: None,
        on_model_loaded: Callable[[], None] = lambda: None,
    ) -> None:
        self._config = config
        self._on_delivery = on_delivery
        self._on_model_loaded = on_model_loaded
        self._store = store
        self._engine = engine
        self._storage = storage
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._generation = GenerationThread()
        self._current: Task | None = None
        self.model_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    def recover(self) -> None:
        """At start-up: tasks left `processing` by a crash run again, or fail when out of attempts."""
        for task in self._store.with_status(TaskStatus.PROCESSING):
            recovered = tasks.recover_interrupted(task, self._config.queue.max_attempts)
            self._record(recovered, TaskStatus.PROCESSING)
            logger.warning("task %s was interrupted (attempt %d): now %s", task.id, task.attempts, recovered.status)

    def start(self) -> None:
        """Start loading the model and taking tasks (in the background: /health answers at once)."""
        self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="sdapi-worker")

    def wake(self) -> None:
        """A task was added: look at the queue now instead of at the next poll."""
        self._wake.set()

    async def stop(self, grace_seconds: float) -> None:
        """Take no new task; let the running one finish within `grace_seconds`, else leave it to be re-run."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is None:
            return
        try:
            # The loop exits by itself once the running task (if any) is recorded.
            await asyncio.wait_for(asyncio.shield(self._loop_task), timeout=grace_seconds)
            return
        except TimeoutError:
            pass
        interrupted = self._current
        self._loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop_task
        if interrupted is not None:
            logger.warning(
                "shutdown: task %s did not finish in %.0fs; it will run again", interrupted.id, grace_seconds
            )
            # A clean shutdown is not the task's fault: give back the attempt it was using.
            self._record(tasks.retry(interrupted, count_attempt=False), TaskStatus.PROCESSING)

    # -- the loop ------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        await self._load_model()
        while not self._stopping:
            try:
                task = self._store.next_pending()
                if task is not None:
                    await self._process(task)
                    continue
            except SdapiError as error:  # the task database failed: log, wait, try again
                logger.error("worker: %s", error.message)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=IDLE_POLL_SECONDS)

    async def _load_model(self) -> None:
        try:
            await self._generation.submit(self._engine.load)
            # Off the event loop: it may read every LoRA file to check it fits the model.
            await asyncio.to_thread(self._on_model_loaded)
        except ModelLoadFailed as error:
            self.model_error = error.message
            logger.error("model not loaded: %s", error.message)
        except Exception as error:
            self.model_error = f"模型加载失败：{type(error).__name__}: {error}"
            logger.exception("model not loaded")

    async def _process(self, task: Task) -> None:
        if self.model_error is not None:
            self._record(tasks.fail(task, self.model_error), TaskStatus.PENDING)
            return
        started = tasks.start(task)
        if not self._record(started, TaskStatus.PENDING):
            return  # someone else changed it meanwhile
        self._current = started
        began = time.perf_counter()
        try:
            keys, engine = await self._generation.submit(lambda: self._make_images(started))
            finished = tasks.complete(started, keys, engine)
        except asyncio.CancelledError:
            raise
        except SdapiError as error:  # GenerationFailed, StorageError...: a result with a user-safe message
            logger.warning("task %s failed: %s", started.id, error.message)
            finished = tasks.fail(started, error.message)
        except Exception:
            logger.exception("task %s failed with an unexpected error", started.id)
            finished = tasks.fail(started, GENERIC_FAILURE)
        finally:
            self._current = None
        if self._record(finished, TaskStatus.PROCESSING):
            logger.info("task %s %s in %.2fs", started.id, finished.status, time.perf_counter() - began)

    def _record(self, task: Task, expected: TaskStatus) -> bool:
        """Store the task's new state; a finished task with a callback_url gets its delivery in the same write."""
        delivery = None
        if task.status.is_terminal and task.params.callback_url:
            delivery = new_delivery(task.id, task.params.callback_url, time.time())
        written = self._store.update(task, expected, delivery)
        if written and delivery is not None:
            self._on_delivery()
        return written

    def _make_images(self, task: Task) -> tuple[list[str], str]:
        """On the generation thread: run the engine, encode and store every image; return the keys and engine."""
        params = task.params
        init_image = None
        if params.init_image is not None:
            raw = self._store.init_image(task.id)
            if raw is None:
                raise GenerationFailed("生成失败：找不到任务的初始图片")
            init_image = open_init_image(raw, params.width, params.height)
        generated = self._engine.generate(params, init_image)
        extension = params.output_format
        return [self._save(encode_image(image, extension), extension) for image in generated.images], generated.engine

    def _save(self, data: bytes, extension: str) -> str:
        """Store one image, retrying storage failures with doubling waits.

        Budget with the defaults (4 tries from 0.5 s): 0.5 + 1 + 2 = 3.5 s of waiting, plus each try's timeout.
        The task is reported completed only once every image is stored.
        """
        settings = self._config.storage
        for attempt in range(1, settings.upload_attempts + 1):
            try:
                return self._storage.save(data, extension, CONTENT_TYPES[extension])
            except StorageError as error:
                if attempt == settings.upload_attempts:
                    raise
                logger.warning("upload try %d failed: %s", attempt, error.message)
                time.sleep(settings.retry_backoff_seconds * 2 ** (attempt - 1))
        raise AssertionError("unreachable")
