"""The worker's task loop: claims pending tasks one at a time under a lease (preferring the models it has loaded:
affinity), runs the engine on the generation thread, and hands the generated images to their finishing step
(encode, store, settle the outcome with its callback delivery in the same write), which overlaps the next task's
generation. At most one task is finishing while the next one generates: a bounded hand-off.

If this process stops renewing a lease (it died, or froze past the lease), the reaper hands the task to another
worker; a frozen worker that wakes up finds its lease gone: its settle writes nothing, so it sends no callback, and
it deletes the images it uploaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
from PIL import Image

from sdapi.background.wakeup import Signals, Wakeup
from sdapi.config import Config
from sdapi.controlnets.images import control_images, image_prompts
from sdapi.core import tasks
from sdapi.core.deliveries import delivery_for
from sdapi.core.nodes import NodeInfo
from sdapi.core.tasks import Task, TaskStatus
from sdapi.engines import Conditioning, Generated, WorkerEngine
from sdapi.errors import (
    GENERIC_GENERATION_FAILURE,
    ErrorCode,
    GenerationFailed,
    ModelLoadFailed,
    SdapiError,
    TaskCancelled,
    TaskStoreError,
)
from sdapi.media import attachments
from sdapi.media.images import open_edit_images, open_init_image
from sdapi.observability import metrics
from sdapi.observability.logs import task_context
from sdapi.store import Lease, Stores
from sdapi.worker.generation_thread import GenerationThread
from sdapi.worker.model_loads import FailedLoads
from sdapi.worker.outputs import Outputs
from sdapi.worker.run import TaskRun

# The logger keeps the name it had before the package split: operators filter logs on it.
logger = logging.getLogger("sdapi.worker")

# How often the idle worker looks at the store even without a wake-up (tasks added by another process).
IDLE_POLL_SECONDS = 1.0
# Settling a finished run is retried while the task store fails: waits double from the first to the last value
# and stay there, until the write succeeds, finds the lease lost, or stop() gives up on the task.
RECORD_RETRY_FIRST_SECONDS = 0.1
RECORD_RETRY_MAX_SECONDS = 5.0


class Worker:
    """Runs tasks from the store through the engine: one generating, at most one more finishing."""

    def __init__(
        self,
        config: Config,
        stores: Stores,
        engine: WorkerEngine,
        outputs: Outputs,
        signals: Signals,
        worker_id: str,
    ) -> None:
        self._config = config
        self._tasks = stores.tasks
        self._init_images = stores.init_images
        self._throughput = stores.throughput
        self._nodes = stores.nodes
        self._engine = engine
        self._outputs = outputs
        self._signals = signals
        self._worker_id = worker_id
        self._lease_seconds = config.queue.lease_seconds
        self._wakeup = Wakeup()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._generation = GenerationThread()
        # The run being generated, and the one whose images are being stored and whose outcome is being written.
        self._generating: TaskRun | None = None
        self._finishing: tuple[TaskRun, asyncio.Task[None]] | None = None
        self.model_error: str | None = None
        # Models this worker failed to load: their tasks go to workers that can, while a new try waits its backoff.
        self._loads = FailedLoads(worker_id)

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start loading the model and taking tasks (in the background: /health answers at once)."""
        self._loop_task = asyncio.get_running_loop().create_task(self._take_tasks(), name="sdapi-worker")

    def wake(self) -> None:
        """A task was added: look at the queue now instead of at the next poll."""
        self._wakeup.nudge()

    def report_cancel_now(self) -> None:
        """A client asked to cancel a running task: the runs report now (and learn whether it is theirs)."""
        for run in self._runs():
            run.report_now()

    async def stop(self, grace_seconds: float) -> None:
        """Take no new task; let the running ones finish within `grace_seconds`, else leave them to be re-run."""
        self._stopping = True
        self._wakeup.nudge()
        if self._loop_task is None:
            return
        try:
            # The loop exits by itself once the running tasks (if any) are recorded.
            await asyncio.wait_for(asyncio.shield(self._loop_task), timeout=grace_seconds)
            return
        except TimeoutError:
            pass
        interrupted = self._runs()
        self._loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop_task
        if self._finishing is not None:
            self._finishing[1].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._finishing[1]
        for run in interrupted:
            run.stop_reporting()
            logger.warning("shutdown: task %s did not finish in %.0fs; it will run again", run.task_id, grace_seconds)
            # A clean shutdown is not the task's fault: give back the attempt it was using. If its outcome was
            # written meanwhile, the lease is gone and this write changes nothing.
            try:
                if await self._settle(run.lease, tasks.retry(run.lease.task, count_attempt=False)):
                    # Its images, some perhaps uploaded, belong to no task now (the settle cleared the staging).
                    await self._outputs.delete(run.task_id, run.staged_keys)
            except SdapiError as error:
                logger.error(
                    "shutdown: task %s stays processing until its lease expires: %s", run.task_id, error.message
                )

    @property
    def models_failed(self) -> dict[str, str]:
        """The models this worker could not load, and why (for the node registry)."""
        return self._loads.failing()

    @property
    def busy(self) -> bool:
        """Whether a task is being generated or finished now."""
        return bool(self._runs())

    @property
    def current_task(self) -> str | None:
        """The id of the task being generated, else of the one being finished (for the node registry)."""
        runs = self._runs()
        return runs[0].task_id if runs else None

    def _runs(self) -> list[TaskRun]:
        runs = [self._generating] if self._generating is not None else []
        if self._finishing is not None and not self._finishing[1].done():
            runs.append(self._finishing[0])
        return runs

    # -- the loop ------------------------------------------------------------------------------------------

    async def _take_tasks(self) -> None:
        await self._load_default_model()
        try:
            while not self._stopping:
                try:
                    skip = self._loads.to_skip(await self._live_nodes()) if self._loads.any() else []
                    lease = await self._tasks.claim(
                        self._worker_id,
                        self._lease_seconds,
                        self._engine.loaded_models(),
                        self._config.queue.affinity_max_wait_seconds,
                        skip,
                    )
                    if lease is not None:
                        await self._process(lease)
                        continue
                except SdapiError as error:  # the task database failed: log, wait, try again
                    logger.error("worker: %s", error.message)
                await self._wakeup.sleep(IDLE_POLL_SECONDS)
        finally:
            if self._finishing is not None and not self._finishing[1].done():
                # Stopping: the last run's outcome is written before the loop ends (stop() bounds the wait).
                await asyncio.shield(self._finishing[1])

    async def _load_default_model(self) -> None:
        try:
            await self._generation.submit(self._engine.load)
            # Hashing the weights reads them once (seconds for a large model), off the event loop.
            await asyncio.to_thread(self._outputs.model_info, self._config.default_model.name)
            # Off the event loop: it may read every LoRA file to check it fits the model.
            await asyncio.to_thread(self._signals.model_loaded)
        except ModelLoadFailed as error:
            self.model_error = error.message
            logger.error("model not loaded: %s", error.message)
        except Exception as error:
            self.model_error = f"模型加载失败：{type(error).__name__}: {error}"
            logger.exception("model not loaded")
        if self.model_error is not None:
            self._loads.record(self._config.default_model.name, self.model_error)

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
            failure = self._loads.message(model)
            if failure is not None and self._loads.waiting(model):
                await self._refuse_unloadable(lease, model, failure)
                return
            await self._generate_then_hand_off(lease)

    async def _refuse_unloadable(self, lease: Lease, model: str, failure: str) -> None:
        """A task of a model this worker failed to load: back to the queue when another live worker may load it
        (this claim raced the registry), else failed, saying why (no live worker can run it)."""
        try:
            elsewhere = self._loads.loadable_elsewhere(model, await self._live_nodes())
        except SdapiError:
            elsewhere = True  # the registry is unreadable: keep the task rather than fail it
        if elsewhere:
            await self._settle_until_written(lease, tasks.retry(lease.task, count_attempt=False))
            return
        failed = tasks.fail(lease.task, failure, ErrorCode.MODEL_NOT_LOADED)
        if await self._settle_until_written(lease, failed):
            self._count(failed, None, 0.0)

    async def _live_nodes(self) -> list[NodeInfo]:
        return await self._nodes.live(self._lease_seconds)

    async def _generate_then_hand_off(self, lease: Lease) -> None:
        """Generate the task's images on the generation thread, then start its finishing and return, so the loop can
        claim the next task while this one's images are stored. Waits first for the previous finishing, if any."""
        run = TaskRun(lease, self._tasks, self._lease_seconds, self._signals)
        self._generating = run
        run.start_reporting()
        began = time.perf_counter()
        try:
            outcome = await self._generate(run)
            if self._finishing is not None:
                await asyncio.shield(self._finishing[1])  # the bound: one task finishing at a time
            finishing = asyncio.get_running_loop().create_task(
                self._finish(run, outcome, began), name=f"sdapi-finish-{run.task_id}"
            )
            finishing.add_done_callback(_log_unexpected)
            self._finishing = (run, finishing)
        except BaseException:
            run.stop_reporting()
            raise
        finally:
            self._generating = None

    async def _generate(self, run: TaskRun) -> Generated | Task:
        """The engine's images for a started task, or the task's outcome when it ended without them (cancelled, or
        failed with a user-safe message and its error code)."""
        started = run.lease.task
        try:
            init_bytes = None
            if started.params.keeps_images:
                init_bytes = await self._init_images.get(started.id)
                if init_bytes is None:
                    raise GenerationFailed("生成失败：找不到任务的初始图片")
            generated = await self._generation.submit(lambda: self._run_engine(started, init_bytes, run))
            run.generation_done()
            return generated
        except SdapiError as error:
            return self._ended_without_images(run, error)
        except Exception:
            logger.exception("task %s failed with an unexpected error", started.id)
            return tasks.fail(started, GENERIC_GENERATION_FAILURE, ErrorCode.INTERNAL)

    def _run_engine(self, task: Task, init_bytes: bytes | None, run: TaskRun) -> Generated:
        """On the generation thread: decode the init image and run the engine. Nothing else happens here."""
        params = task.params
        init_image: Image.Image | None = None
        parts = attachments.unpack(init_bytes) if init_bytes is not None else {}
        if params.init_image is not None and attachments.INIT in parts:
            if params.inpaint is not None:  # the mask travels as the init image's alpha channel
                init_image = open_edit_images(parts, params)
            else:
                init_image = open_init_image(parts[attachments.INIT], params.init_image, params.width, params.height)
        conditioning = Conditioning(
            controls=tuple(control_images(params, parts, self._config.annotators_path)),
            image_prompts=tuple(image_prompts(params, parts)),
        )
        began = time.perf_counter()
        generated = self._engine.generate(params, init_image, run.on_step, conditioning)
        run.generation_seconds = time.perf_counter() - began
        return generated

    async def _finish(self, run: TaskRun, outcome: Generated | Task, began: float) -> None:
        """Store the images (off the generation thread), then write the outcome while the lease is ours."""
        started = run.lease.task
        with task_context(started.id, started.request_id):
            try:
                finished = outcome if isinstance(outcome, Task) else await self._stored(run, outcome)
                if await self._settle_until_written(run.lease, finished):
                    elapsed = time.perf_counter() - began
                    logger.info("task %s %s in %.2fs", started.id, finished.status, elapsed)
                    self._count(finished, run, elapsed)
                    await self._measure(finished, run)
                else:
                    logger.warning(
                        "task %s: lease lost before its outcome was written; nothing recorded, nothing sent",
                        finished.id,
                    )
                    await self._outputs.delete(finished.id, finished.result_keys)
            finally:
                run.stop_reporting()

    async def _stored(self, run: TaskRun, generated: Generated) -> Task:
        """The task completed with its stored images; cancelled (its images removed again) when a cancel was asked
        for meanwhile; failed when storing failed."""
        started = run.lease.task
        try:
            keys = self._outputs.new_keys(started, len(generated.images))
            # Recorded before any upload: if this process dies before the outcome is written, the reaper deletes
            # these keys with the expired lease, so no stored image is left that no task refers to.
            if not await self._stage_until_written(run.lease, keys):
                return self._ended_without_images(run, TaskStoreError("任务租约已失效：另一个 worker 接手了此任务"))
            run.staged_keys = keys
            images = await self._outputs.store(
                started, generated.images, keys, generated.engine, self._engine.describe()
            )
        except SdapiError as error:
            return self._ended_without_images(run, error)
        keys = [image.key for image in images]
        if run.cancel.is_set() or await run.cancel_requested():
            await self._outputs.delete(started.id, keys)
            return self._ended_without_images(run, TaskCancelled(tasks.CANCELLED_MESSAGE))
        completed = tasks.complete(started, keys, generated.engine, images=tuple(images))
        return msgspec.structs.replace(completed, progress=run.progress)

    def _ended_without_images(self, run: TaskRun, error: SdapiError) -> Task:
        started = run.lease.task
        if isinstance(error, TaskCancelled):
            logger.info("task %s cancelled", started.id)
            return msgspec.structs.replace(tasks.cancel(started), progress=run.progress)
        # GenerationFailed, StorageError, TaskStoreError...: a result, not a crash
        logger.warning("task %s failed: %s", started.id, error.message)
        return tasks.fail(started, error.message, error.error_code)

    # -- recording -----------------------------------------------------------------------------------------

    def _count(self, finished: Task, run: TaskRun | None, elapsed: float) -> None:
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

    async def _measure(self, finished: Task, run: TaskRun) -> None:
        """Fold a completed run's speed into the shared moving average the queue's estimates use."""
        if finished.status is not TaskStatus.COMPLETED or finished.engine is None or not run.generation_seconds:
            return
        try:
            await self._throughput.record(finished.engine, run.generation_seconds / finished.params.work)
        except SdapiError as error:
            logger.warning("task %s: recording its speed failed: %s", finished.id, error.message)

    async def _settle(self, lease: Lease, task: Task) -> bool:
        """Write the task's new state while the lease is ours; a finished task with a callback_url gets its delivery
        in the same write. False: the lease was lost, nothing was written."""
        delivery = delivery_for(task, time.time())
        written = await self._tasks.settle(lease, task, delivery)
        if written:
            self._signals.task_changed(task.id)
            if delivery is not None:
                self._signals.delivery_due()
        return written

    async def _stage_until_written(self, lease: Lease, keys: list[str]) -> bool:
        """Record the keys about to be uploaded, retried as settling is (an outage of the database is not the
        task's fault); False when the lease was lost."""
        return await _until_written(lambda: self._tasks.stage(lease, keys), f"task {lease.task.id}: staging its images")

    async def _settle_until_written(self, lease: Lease, task: Task) -> bool:
        """`_settle`, retried while the task store fails (see RECORD_RETRY_*), until it answers or stop() cancels."""
        return await _until_written(lambda: self._settle(lease, task), f"task {task.id}: recording {task.status}")

    # -- models --------------------------------------------------------------------------------------------

    def _must_load(self, model: str) -> bool:
        """Whether the task should wait in the queue while its model loads: the engine loads models on demand and
        lacks this one, and affinity is on (without it, the other workers would take the given-back task and load
        the model too, so the task is held and the model loaded within its run). A model that failed to load here
        is not tried again this way: its task runs, and fails saying why."""
        return (
            self._config.queue.affinity_max_wait_seconds > 0
            and self._engine.loads_on_demand
            and model not in self._engine.loaded_models()
            and not self._loads.waiting(model)
        )

    async def _requeue_while_loading(self, lease: Lease, model: str) -> None:
        """Give the task back to the queue (pending, the attempt not counted) and load its model: it waits there,
        never failed, and a worker that has the model loaded may take it meanwhile. This worker's next claim then
        prefers it (affinity)."""
        if await self._settle_until_written(lease, tasks.retry(lease.task, count_attempt=False)):
            self._signals.task_changed(lease.task.id)
        logger.info("task %s waits in the queue while model %s loads", lease.task.id, model)
        try:
            await self._generation.submit(lambda: self._engine.prepare(model))
        except Exception as error:  # its tasks go to other workers, or fail with this message if none can run them
            message = (
                error.message if isinstance(error, SdapiError) else f"模型加载失败：{type(error).__name__}: {error}"
            )
            self._loads.record(model, message)
            logger.error("model %s could not be loaded: %s", model, message)
            return
        self._loads.succeeded(model)
        if model == self._config.default_model.name:
            self.model_error = None


async def _until_written(write: Callable[[], Awaitable[bool]], what: str) -> bool:
    """`write()`, retried while the task store fails: waits double from RECORD_RETRY_FIRST_SECONDS to
    RECORD_RETRY_MAX_SECONDS and stay there, until it answers (True, or False for a lost lease) or is cancelled."""
    wait = RECORD_RETRY_FIRST_SECONDS
    while True:
        try:
            return await write()
        except SdapiError as error:
            logger.error("%s failed, retrying in %.1fs: %s", what, wait, error)
            await asyncio.sleep(wait)
            wait = min(wait * 2, RECORD_RETRY_MAX_SECONDS)


def _log_unexpected(finishing: asyncio.Task[None]) -> None:
    """A finishing step that raised what it should have turned into an outcome: say so (its lease expires and the
    reaper gives the task another run)."""
    if not finishing.cancelled() and (error := finishing.exception()) is not None:
        logger.error("finishing a task failed unexpectedly", exc_info=error)
