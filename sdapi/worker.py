"""The worker's task loop: claims pending tasks one at a time under a lease, runs the engine on the generation
thread, stores the images and settles the result (with its callback delivery, in the same write).

The lease is renewed every third of queue.lease_seconds while the task runs. If this process stops renewing (it
died, or froze past the lease), the reaper hands the task to another worker; a frozen worker that wakes up finds
its lease gone: its settle writes nothing, so it sends no callback, and it deletes the images it uploaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable

import msgspec

from sdapi import metrics, tasks
from sdapi.config import Config
from sdapi.deliveries import delivery_for
from sdapi.engines import Engine
from sdapi.errors import (
    GENERIC_GENERATION_FAILURE,
    ErrorCode,
    GenerationFailed,
    ModelLoadFailed,
    SdapiError,
    StorageError,
    TaskCancelled,
)
from sdapi.generation_thread import GenerationThread
from sdapi.images import CONTENT_TYPES, encode_image, open_init_image
from sdapi.logs import task_context
from sdapi.provenance import ModelInfo, image_record
from sdapi.storage import ImageStorage
from sdapi.store import InitImageStore, Lease, TaskStore, ThroughputLog
from sdapi.tasks import Progress, StoredImage, Task, TaskStatus
from sdapi.wakeup import Wakeup

logger = logging.getLogger(__name__)

# How often the idle worker looks at the store even without a wake-up (tasks added by another process).
IDLE_POLL_SECONDS = 1.0
# How often a running task's progress is written to the store (and a cancel request is looked for).
PROGRESS_SECONDS = 1.0
# Settling a finished run is retried while the task store fails: waits double from the first to the last value
# and stay there, until the write succeeds, finds the lease lost, or stop() gives up on the task.
RECORD_RETRY_FIRST_SECONDS = 0.1
RECORD_RETRY_MAX_SECONDS = 5.0


class _Run:
    """What the generation thread and the event loop share about the running task: its progress (written by the
    thread after every step, read by the reporter) and the cancel flag (set by the reporter, read by the thread)."""

    def __init__(self, num_images: int) -> None:
        self.progress = Progress(step=0, total_steps=0, images_done=0, num_images=num_images)
        self.cancel = threading.Event()
        self.wakeup = Wakeup()
        # How long the engine took (for the queue's estimates); 0 until it has run.
        self.generation_seconds = 0.0

    def on_step(self, step: int, total_steps: int, images_done: int) -> None:
        """On the generation thread, after each denoising step: record it; stop here if cancelled."""
        self.progress = msgspec.structs.replace(
            self.progress, step=step, total_steps=total_steps, images_done=images_done
        )
        if self.cancel.is_set():
            raise TaskCancelled(tasks.CANCELLED_MESSAGE)

    def finish(self) -> None:
        total = max(self.progress.total_steps, self.progress.step)
        self.progress = msgspec.structs.replace(
            self.progress, step=total, total_steps=total, images_done=self.progress.num_images
        )


class Worker:
    """Runs tasks from the store through the engine, one at a time."""

    def __init__(
        self,
        config: Config,
        task_store: TaskStore,
        init_images: InitImageStore,
        throughput: ThroughputLog,
        engine: Engine,
        storage: ImageStorage,
        worker_id: str,
        on_delivery: Callable[[], None] = lambda: None,
        on_model_loaded: Callable[[], None] = lambda: None,
        on_change: Callable[[str], None] = lambda task_id: None,
        *,
        model_sha256: Callable[[str], str | None],
    ) -> None:
        self._config = config
        self._tasks = task_store
        self._init_images = init_images
        self._throughput = throughput
        self._engine = engine
        self._storage = storage
        self._worker_id = worker_id
        self._lease_seconds = config.queue.lease_seconds
        self._on_delivery = on_delivery
        self._on_model_loaded = on_model_loaded
        # Told the id of a task whose progress or outcome this worker just wrote (wakes this process's waiters).
        self._on_change = on_change
        self._wakeup = Wakeup()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._generation = GenerationThread()
        # The lease of the task this worker has claimed and not yet settled (generating, or being recorded), and
        # its run's progress and cancel flag.
        self._current: Lease | None = None
        self._running: _Run | None = None
        self.model_error: str | None = None
        # The sha256 of a model's weights by name, for the images' generation records (None: a hub id): the
        # catalog's, which reads each model once per process.
        self._model_sha256 = model_sha256
        # Models whose on-demand load failed on this worker: their tasks are no longer requeued for a load.
        self._unloadable: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------------------------

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
        task_id = interrupted.task.id
        logger.warning("shutdown: task %s did not finish in %.0fs; it will run again", task_id, grace_seconds)
        # A clean shutdown is not the task's fault: give back the attempt it was using. If its outcome was written
        # meanwhile, the lease is gone and this write changes nothing.
        try:
            await self._settle(interrupted, tasks.retry(interrupted.task, count_attempt=False))
        except SdapiError as error:
            logger.error("shutdown: task %s stays processing until its lease expires: %s", task_id, error.message)

    @property
    def busy(self) -> bool:
        """Whether a task is being generated or recorded now."""
        return self._current is not None

    @property
    def current_task(self) -> str | None:
        """The id of the task being generated or recorded now (for the node registry)."""
        return None if self._current is None else self._current.task.id

    # -- the loop ------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        await self._load_model()
        while not self._stopping:
            try:
                lease = await self._tasks.claim(
                    self._worker_id,
                    self._lease_seconds,
                    self._loaded_models(),
                    self._config.queue.affinity_max_wait_seconds,
                )
                if lease is not None:
                    await self._process(lease)
                    continue
            except SdapiError as error:  # the task database failed: log, wait, try again
                logger.error("worker: %s", error.message)
            await self._wakeup.sleep(IDLE_POLL_SECONDS)

    async def _load_model(self) -> None:
        try:
            await self._generation.submit(self._engine.load)
            # Hashing the weights reads them once (seconds for a large model), off the event loop.
            await asyncio.to_thread(self._model_info, self._config.default_model.name)
            # Off the event loop: it may read every LoRA file to check it fits the model.
            await asyncio.to_thread(self._on_model_loaded)
        except ModelLoadFailed as error:
            self.model_error = error.message
            logger.error("model not loaded: %s", error.message)
        except Exception as error:
            self.model_error = f"模型加载失败：{type(error).__name__}: {error}"
            logger.exception("model not loaded")
        if self.model_error is not None:
            self._unloadable.add(self._config.default_model.name)

    def check_cancel(self) -> None:
        """A client asked to cancel a running task: report now (and learn whether it is this one)."""
        if self._running is not None:
            self._running.wakeup.nudge()

    async def _process(self, lease: Lease) -> None:
        started = lease.task
        with task_context(started.id, started.request_id):  # every line about this run names the task
            default = self._config.default_model.name
            model = started.params.model or default
            if self._must_load(model):
                await self._requeue_while_loading(lease, model)
                return
            if started.started_at is not None:
                metrics.QUEUE_WAIT.observe((started.started_at - started.created_at).total_seconds())
            if self.model_error is not None and model == default:
                # The default model failed to load at start; another model's task still gets its own try.
                failed = tasks.fail(started, self.model_error, ErrorCode.MODEL_NOT_LOADED)
                if await self._settle_until_written(lease, failed):
                    self._count(failed, None, 0.0)
                return
            await self._run_under_lease(lease)

    async def _run_under_lease(self, lease: Lease) -> None:
        started = lease.task
        self._current = lease
        self._running = run = _Run(started.params.num_images)
        loop = asyncio.get_running_loop()
        helpers = [
            loop.create_task(self._keep_lease(lease), name=f"sdapi-lease-{started.id}"),
            loop.create_task(self._report_progress(lease, run), name=f"sdapi-progress-{started.id}"),
        ]
        began = time.perf_counter()
        try:
            finished = await self._run_task(lease, run)
            if await self._settle_until_written(lease, finished):
                elapsed = time.perf_counter() - began
                logger.info("task %s %s in %.2fs", started.id, finished.status, elapsed)
                self._count(finished, run, elapsed)
                await self._measure(finished, run)
            else:
                await self._discard(finished)
        finally:
            for helper in helpers:
                helper.cancel()
            self._current = None
            self._running = None

    def _count(self, finished: Task, run: _Run | None, elapsed: float) -> None:
        """The metrics of a run whose outcome was written."""
        params = finished.params
        if finished.status is TaskStatus.COMPLETED and finished.engine is not None:
            metrics.TASKS_COMPLETED.labels(dialect=finished.dialect, engine=finished.engine).inc()
            size = metrics.size_class(params.width, params.height)
            model = params.model or self._config.default_model.name
            metrics.RUN_SECONDS.labels(engine=finished.engine, model=model, size_class=size).observe(elapsed)
            if run is not None and run.generation_seconds and run.progress.total_steps:
                step = run.generation_seconds / run.progress.total_steps
                metrics.STEP_SECONDS.labels(engine=finished.engine).observe(step)
        elif finished.error_code is not None:
            metrics.TASKS_FAILED.labels(dialect=finished.dialect, error_code=finished.error_code.value).inc()

    async def _measure(self, finished: Task, run: _Run) -> None:
        """Fold a completed run's speed into the shared moving average the queue's estimates use."""
        if finished.status is not TaskStatus.COMPLETED or finished.engine is None or not run.generation_seconds:
            return
        try:
            await self._throughput.record(finished.engine, run.generation_seconds / finished.params.work)
        except SdapiError as error:
            logger.warning("task %s: recording its speed failed: %s", finished.id, error.message)

    async def _report_progress(self, lease: Lease, run: _Run) -> None:
        """Write the run's progress about once a second (or at once when nudged) and learn from the answer whether
        a client asked to cancel; the generation thread then stops at its next step."""
        while True:
            await run.wakeup.sleep(PROGRESS_SECONDS)
            try:
                if await self._tasks.report(lease, run.progress):
                    run.cancel.set()
                self._on_change(lease.task.id)
            except SdapiError as error:  # progress is best effort; the lease keeper owns the task's fate
                logger.error("task %s: reporting progress failed: %s", lease.task.id, error.message)

    async def _keep_lease(self, lease: Lease) -> None:
        """Renew the lease every third of its length until cancelled, or until it turns out lost."""
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            try:
                if not await self._tasks.renew(lease, self._lease_seconds):
                    logger.warning(
                        "task %s: lease lost (another worker may run it); its outcome will not count", lease.task.id
                    )
                    return
            except SdapiError as error:  # keep trying: the lease may still be ours when the store answers again
                logger.error("task %s: renewing the lease failed: %s", lease.task.id, error.message)

    async def _discard(self, finished: Task) -> None:
        """The lease was lost before the outcome was written: the task belongs to another run now. Delete the images
        this run uploaded, so nothing refers to them and no storage is left behind."""
        logger.warning(
            "task %s: lease lost before its outcome was written; nothing recorded, nothing sent", finished.id
        )
        await self._delete_images(finished.id, finished.result_keys)

    async def _run_task(self, lease: Lease, run: _Run) -> Task:
        """Generate and store the images of a started task: the task completed, cancelled, or failed with a
        user-safe message and its error code."""
        started = lease.task
        try:
            init_image = None
            if started.params.is_image_to_image:
                init_image = await self._init_images.get(started.id)
                if init_image is None:
                    raise GenerationFailed("生成失败：找不到任务的初始图片")
            images, engine = await self._generation.submit(lambda: self._make_images(started, init_image, run))
            keys = [image.key for image in images]
            run.finish()
            # A cancel asked for while the images were being stored still counts: they are removed again.
            if run.cancel.is_set() or await self._cancel_requested(lease, run):
                await self._delete_images(started.id, keys)
                raise TaskCancelled(tasks.CANCELLED_MESSAGE)
            completed = tasks.complete(started, keys, engine, images=tuple(images))
            return msgspec.structs.replace(completed, progress=run.progress)
        except TaskCancelled:
            logger.info("task %s cancelled", started.id)
            return msgspec.structs.replace(tasks.cancel(started), progress=run.progress)
        except SdapiError as error:  # GenerationFailed, StorageError, TaskStoreError...: a result, not a crash
            logger.warning("task %s failed: %s", started.id, error.message)
            return tasks.fail(started, error.message, error.error_code)
        except Exception:
            logger.exception("task %s failed with an unexpected error", started.id)
            return tasks.fail(started, GENERIC_GENERATION_FAILURE, ErrorCode.INTERNAL)

    async def _cancel_requested(self, lease: Lease, run: _Run) -> bool:
        try:
            return await self._tasks.report(lease, run.progress)
        except SdapiError:
            return False  # the store is down: the images stand

    async def _delete_images(self, task_id: str, keys: list[str] | tuple[str, ...]) -> None:
        if not keys:
            return
        try:
            await asyncio.to_thread(self._storage.delete, keys)
        except SdapiError as error:
            logger.error("task %s: deleting the images of a dropped run failed: %s", task_id, error.message)

    async def _settle(self, lease: Lease, task: Task) -> bool:
        """Write the task's new state while the lease is ours; a finished task with a callback_url gets its delivery
        in the same write. False: the lease was lost, nothing was written."""
        delivery = delivery_for(task, time.time())
        written = await self._tasks.settle(lease, task, delivery)
        if written:
            self._on_change(task.id)
            if delivery is not None:
                self._on_delivery()
        return written

    async def _settle_until_written(self, lease: Lease, task: Task) -> bool:
        """`_settle`, retried while the task store fails (see RECORD_RETRY_*), until it answers or stop() cancels."""
        wait = RECORD_RETRY_FIRST_SECONDS
        while True:
            try:
                return await self._settle(lease, task)
            except SdapiError as error:
                logger.error("task %s: recording %s failed, retrying in %.1fs: %s", task.id, task.status, wait, error)
                await asyncio.sleep(wait)
                wait = min(wait * 2, RECORD_RETRY_MAX_SECONDS)

    def _make_images(self, task: Task, init_bytes: bytes | None, run: _Run) -> tuple[list[StoredImage], str]:
        """On the generation thread: run the engine, encode every image (with its generation record, unless
        output.embed_parameters is off) and store it; return the stored images and the engine."""
        params = task.params
        init_image = None
        if init_bytes is not None and params.init_image is not None:
            init_image = open_init_image(init_bytes, params.init_image, params.width, params.height)
        began = time.perf_counter()
        generated = self._engine.generate(params, init_image, run.on_step)
        run.generation_seconds = time.perf_counter() - began
        extension = params.output_format
        details = self._engine.describe()
        stored = []
        for index, image in enumerate(generated.images):
            record = None
            if self._config.output.embed_parameters:
                record = image_record(
                    params,
                    index,
                    task.id,
                    self._model_info(params.model or self._config.default_model.name),
                    generated.engine,
                    details.get("dtype", ""),
                    details.get("scheduler", ""),
                )
            encoding = time.perf_counter()
            data = encode_image(image, extension, record)
            uploading = time.perf_counter()
            metrics.ENCODE_SECONDS.labels(format=extension).observe(uploading - encoding)
            key = self._save(data, extension)
            metrics.UPLOAD_SECONDS.observe(time.perf_counter() - uploading)
            stored.append(
                StoredImage(
                    key=key,
                    seed=params.seed + index,
                    width=image.width,
                    height=image.height,
                    bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                )
            )
        return stored, generated.engine

    def _must_load(self, model: str) -> bool:
        """Whether the task should wait in the queue while its model loads: a pool of several models lacks it, and
        affinity is on (without it, the other workers would take the given-back task and load the model too, so the
        task is held and the model loaded within its run). A model that failed to load here is not tried again this
        way: its task runs, and fails saying why."""
        return (
            self._config.queue.affinity_max_wait_seconds > 0
            and model not in self._loaded_models()
            and model not in self._unloadable
            and callable(getattr(self._engine, "prepare", None))
        )

    async def _requeue_while_loading(self, lease: Lease, model: str) -> None:
        """Give the task back to the queue (pending, the attempt not counted) and load its model: it waits there,
        never failed, and a worker that has the model loaded may take it meanwhile. This worker's next claim then
        prefers it (affinity)."""
        if await self._settle_until_written(lease, tasks.retry(lease.task, count_attempt=False)):
            self._on_change(lease.task.id)
        logger.info("task %s waits in the queue while model %s loads", lease.task.id, model)
        prepare = getattr(self._engine, "prepare")  # noqa: B009 - only a model pool has it (see _must_load)
        try:
            await self._generation.submit(lambda: prepare(model))
        except Exception as error:  # its tasks will run and fail with the load's own message
            self._unloadable.add(model)
            logger.error("model %s could not be loaded: %s", model, error)

    def _loaded_models(self) -> list[str]:
        """The models this worker has in memory (a pool of several; another engine serves the default alone)."""
        loaded_models = getattr(self._engine, "loaded_models", None)
        if callable(loaded_models):
            return list(loaded_models())
        return [self._config.default_model.name] if self._engine.loaded else []

    def _model_info(self, name: str) -> ModelInfo:
        """What the image records say of model `name`: its source and the hash of its weights."""
        return ModelInfo(self._config.model_config(name).path, self._model_sha256(name))

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
