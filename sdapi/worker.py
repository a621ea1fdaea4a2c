"""The worker's task loop: takes pending tasks one at a time, runs the engine on the generation thread, stores the
images and records the result (with its callback delivery, in the same write)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from sdapi import tasks
from sdapi.config import Config
from sdapi.deliveries import new_delivery
from sdapi.engines import Engine
from sdapi.errors import GENERIC_GENERATION_FAILURE, GenerationFailed, ModelLoadFailed, SdapiError, StorageError
from sdapi.generation_thread import GenerationThread
from sdapi.images import CONTENT_TYPES, encode_image, open_init_image
from sdapi.storage import ImageStorage
from sdapi.store import InitImageStore, TaskStore
from sdapi.tasks import Task, TaskStatus
from sdapi.wakeup import Wakeup

logger = logging.getLogger(__name__)

# How often the idle worker looks at the store even without a wake-up (tasks added by another process).
IDLE_POLL_SECONDS = 1.0
# Recording a finished run is retried while the task store fails: waits double from the first to the last value
# and stay there, until the write succeeds or stop() gives up on the task (a task must not stay `processing`
# because one write failed).
RECORD_RETRY_FIRST_SECONDS = 0.1
RECORD_RETRY_MAX_SECONDS = 5.0


class Worker:
    """Runs tasks from the store through the engine, one at a time."""

    def __init__(
        self,
        config: Config,
        task_store: TaskStore,
        init_images: InitImageStore,
        engine: Engine,
        storage: ImageStorage,
        on_delivery: Callable[[], None] = lambda: None,
        on_model_loaded: Callable[[], None] = lambda: None,
    ) -> None:
        self._config = config
        self._tasks = task_store
        self._init_images = init_images
        self._engine = engine
        self._storage = storage
        self._on_delivery = on_delivery
        self._on_model_loaded = on_model_loaded
        self._wakeup = Wakeup()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._generation = GenerationThread()
        # The task this worker has started and not yet recorded as finished (generating, or being recorded).
        self._current: Task | None = None
        self.model_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def recover(self) -> None:
        """At start-up: tasks left `processing` by a crash run again, or fail when out of attempts."""
        for task in await self._tasks.with_status(TaskStatus.PROCESSING):
            recovered = tasks.recover_interrupted(task, self._config.queue.max_attempts)
            await self._record(recovered, TaskStatus.PROCESSING)
            logger.warning("task %s was interrupted (attempt %d): now %s", task.id, task.attempts, recovered.status)

    def start(self) -> None:
        """Start loading the model and taking tasks (in the background: /health answers at once)."""
        self._loop_task = asyncio.get_running_loop().create_task(self._run(), name="sdapi-worker")

    def wake(self) -> None:
        """A task was added: look at the queue now instead of at the next poll."""
        self._wakeup.nudge()

    async def stop(self, grace_seconds: float) -> None:
        """Take no new task; let the running one finish within `grace_seconds`, else leave it to be re-run."""
        self._stopping = True
        self._wakeup.nudge()
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
        if interrupted is None:
            return
        logger.warning("shutdown: task %s did not finish in %.0fs; it will run again", interrupted.id, grace_seconds)
        # A clean shutdown is not the task's fault: give back the attempt it was using. If its outcome was written
        # meanwhile, this write finds it finished and changes nothing.
        try:
            await self._record(tasks.retry(interrupted, count_attempt=False), TaskStatus.PROCESSING)
        except SdapiError as error:
            logger.error("shutdown: task %s stays processing until restart recovery: %s", interrupted.id, error.message)

    @property
    def busy(self) -> bool:
        """Whether a task is being generated or recorded now."""
        return self._current is not None

    # -- the loop ------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        await self._load_model()
        while not self._stopping:
            try:
                task = await self._tasks.next_pending()
                if task is not None:
                    await self._process(task)
                    continue
            except SdapiError as error:  # the task database failed: log, wait, try again
                logger.error("worker: %s", error.message)
            await self._wakeup.sleep(IDLE_POLL_SECONDS)

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
            await self._record(tasks.fail(task, self.model_error), TaskStatus.PENDING)
            return
        started = tasks.start(task)
        if not await self._record(started, TaskStatus.PENDING):
            return  # someone else changed it meanwhile
        self._current = started
        began = time.perf_counter()
        try:
            finished = await self._run_task(started)
            if await self._record_until_written(finished, TaskStatus.PROCESSING):
                logger.info("task %s %s in %.2fs", started.id, finished.status, time.perf_counter() - began)
        finally:
            self._current = None

    async def _run_task(self, started: Task) -> Task:
        """Generate and store the images of a started task: the task completed, or failed with a user-safe message."""
        try:
            init_image = None
            if started.params.is_image_to_image:
                init_image = await self._init_images.get(started.id)
                if init_image is None:
                    raise GenerationFailed("生成失败：找不到任务的初始图片")
            keys, engine = await self._generation.submit(lambda: self._make_images(started, init_image))
            return tasks.complete(started, keys, engine)
        except SdapiError as error:  # GenerationFailed, StorageError, TaskStoreError...: a result, not a crash
            logger.warning("task %s failed: %s", started.id, error.message)
            return tasks.fail(started, error.message)
        except Exception:
            logger.exception("task %s failed with an unexpected error", started.id)
            return tasks.fail(started, GENERIC_GENERATION_FAILURE)

    async def _record(self, task: Task, expected: TaskStatus) -> bool:
        """Store the task's new state; a finished task with a callback_url gets its delivery in the same write."""
        delivery = None
        if task.status.is_terminal and task.params.callback_url:
            delivery = new_delivery(task.id, task.params.callback_url, time.time())
        written = await self._tasks.update(task, expected, delivery)
        if written and delivery is not None:
            self._on_delivery()
        return written

    async def _record_until_written(self, task: Task, expected: TaskStatus) -> bool:
        """`_record`, retried while the task store fails (see RECORD_RETRY_*), until written or cancelled by stop()."""
        wait = RECORD_RETRY_FIRST_SECONDS
        while True:
            try:
                return await self._record(task, expected)
            except SdapiError as error:
                logger.error("task %s: recording %s failed, retrying in %.1fs: %s", task.id, task.status, wait, error)
                await asyncio.sleep(wait)
                wait = min(wait * 2, RECORD_RETRY_MAX_SECONDS)

    def _make_images(self, task: Task, init_bytes: bytes | None) -> tuple[list[str], str]:
        """On the generation thread: run the engine, encode and store every image; return the keys and engine."""
        params = task.params
        init_image = None
        if init_bytes is not None and params.init_image is not None:
            init_image = open_init_image(init_bytes, params.init_image, params.width, params.height)
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
