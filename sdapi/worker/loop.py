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
from collections.abc import Awaitable, Callable, Mapping

import msgspec
from PIL import Image

from sdapi.background.wakeup import Signals, Wakeup
from sdapi.config import Config
from sdapi.controlnets.images import control_images, image_prompts
from sdapi.core import tasks
from sdapi.core.batching import batch_key
from sdapi.core.deliveries import delivery_for
from sdapi.core.nodes import NodeInfo
from sdapi.core.tasks import Task, TaskStatus
from sdapi.engines import Conditioning, Run, RunResult, WorkerEngine
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
        # The runs being generated (more than one: a cross-request batch), and those whose images are being stored
        # and whose outcomes are being written.
        self._generating: list[TaskRun] = []
        self._finishing: tuple[list[TaskRun], asyncio.Task[None]] | None = None
        # Runs that left their batch (cancelled) while it generates: their outcome is written at once.
        self._leaving: dict[TaskRun, asyncio.Task[None]] = {}
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
        for finishing in [*([self._finishing[1]] if self._finishing else []), *self._leaving.values()]:
            finishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await finishing
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
        runs = list(self._generating)
        if self._finishing is not None and not self._finishing[1].done():
            runs.extend(self._finishing[0])
        runs.extend(run for run, leaving in self._leaving.items() if not leaving.done())
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
            _observe_queue_wait(started)
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
        """Generate the task's images on the generation thread (with its companions' when queue.batch_max lets
        compatible tasks share the batch), then start their finishing and return, so the loop can claim the next
        task while these images are stored. Waits first for the previous finishing, if any."""
        first = self._start_run(lease)
        began = time.perf_counter()
        try:
            runs = [first, *await self._companions(first)]
            if len(runs) == 1:
                outcomes: list[RunResult | Task | None] = [await self._generate(first)]
            else:
                outcomes = await self._generate_batch(runs, began)
            metrics.BATCH_TASKS.observe(len(runs))
            if self._finishing is not None:
                await asyncio.shield(self._finishing[1])  # the bound: one run (or batch) finishing at a time
            # A run that left its batch (outcome None) is being finished already.
            finishing_runs = [
                (run, outcome) for run, outcome in zip(runs, outcomes, strict=True) if outcome is not None
            ]
            finishing = asyncio.get_running_loop().create_task(
                self._finish_all(finishing_runs, began), name=f"sdapi-finish-{first.task_id}"
            )
            finishing.add_done_callback(_log_unexpected)
            self._finishing = ([run for run, _ in finishing_runs], finishing)
        except BaseException:
            for run in self._generating:
                run.stop_reporting()
            raise
        finally:
            self._generating = []

    def _start_run(self, lease: Lease) -> TaskRun:
        """A claimed task's run, reporting its progress and renewing its lease from now on."""
        run = TaskRun(lease, self._tasks, self._lease_seconds, self._signals)
        self._generating.append(run)
        run.start_reporting()
        return run

    async def _companions(self, first: TaskRun) -> list[TaskRun]:
        """The runs of the pending tasks that can share `first`'s denoising batch (queue.batch_max images in all),
        claimed now and for up to queue.batch_wait_ms more while the batch has room; none when batching is off or
        `first` always runs alone."""
        queue = self._config.queue
        task = first.lease.task
        room = queue.batch_max - task.params.num_images
        if room < 1 or batch_key(task.params) is None:
            return []
        deadline = time.monotonic() + queue.batch_wait_ms / 1000
        companions: list[TaskRun] = []
        while room > 0 and not self._stopping:
            try:
                leases = await self._tasks.claim_companions(self._worker_id, self._lease_seconds, task, room)
            except SdapiError as error:  # the batch runs with what it has
                logger.error("worker: claiming companions for task %s failed: %s", task.id, error.message)
                break
            for lease in leases:
                _observe_queue_wait(lease.task)
                companions.append(self._start_run(lease))
                room -= lease.task.params.num_images
            left = deadline - time.monotonic()
            if room < 1 or left <= 0:
                break
            await self._wakeup.sleep(left)  # nudged when a task is submitted here
        if companions:
            logger.info("task %s runs in one batch with %s", task.id, ", ".join(run.task_id for run in companions))
        return companions

    async def _generate(self, run: TaskRun) -> RunResult | Task:
        """The engine's images for a started task, or the task's outcome when it ended without them (cancelled, or
        failed with a user-safe message and its error code)."""
        started = run.lease.task
        try:
            init_bytes = await self._stored_inputs(started)
            generated = await self._generation.submit(lambda: self._run_engine(started, init_bytes, run))
            run.generation_done()
            return generated
        except SdapiError as error:
            return self._ended_without_images(run, error)
        except Exception:
            logger.exception("task %s failed with an unexpected error", started.id)
            return tasks.fail(started, GENERIC_GENERATION_FAILURE, ErrorCode.INTERNAL)

    async def _stored_inputs(self, task: Task) -> bytes | None:
        """The images stored beside the task (init image, mask, control images), None when it has none."""
        if not task.params.keeps_images:
            return None
        init_bytes = await self._init_images.get(task.id)
        if init_bytes is None:
            raise GenerationFailed("生成失败：找不到任务的初始图片")
        return init_bytes

    def _opened_inputs(self, task: Task, init_bytes: bytes | None) -> tuple[Image.Image | None, Conditioning]:
        """On the generation thread: the task's init image (RGBA with the mask as alpha for inpainting) and its
        ControlNet and IP-Adapter pictures, decoded."""
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
        return init_image, conditioning

    def _run_engine(self, task: Task, init_bytes: bytes | None, run: TaskRun) -> RunResult:
        """On the generation thread: decode the init image and run the engine. Nothing else happens here."""
        init_image, conditioning = self._opened_inputs(task, init_bytes)
        began = time.perf_counter()
        generated = self._engine.generate(Run(task.params, init_image, conditioning, run.on_step))
        run.generation_seconds = time.perf_counter() - began
        return generated

    async def _generate_batch(self, runs: list[TaskRun], began: float) -> list[RunResult | Task | None]:
        """`_generate` for the runs of one batch: each one's images, or its outcome when it ended without them;
        None for a run that left the batch (cancelled), whose outcome is being written already."""
        outcomes: list[RunResult | Task | None] = [None] * len(runs)
        inputs: dict[int, bytes | None] = {}
        for index, run in enumerate(runs):
            try:
                inputs[index] = await self._stored_inputs(run.lease.task)
            except SdapiError as error:
                outcomes[index] = self._ended_without_images(run, error)
        left: set[TaskRun] = set()
        loop = asyncio.get_running_loop()

        def leave(run: TaskRun) -> None:  # on the event loop
            left.add(run)
            self._leave(run, began)

        def on_step(run: TaskRun) -> Callable[[int, int, int], None]:
            def reported(step: int, total_steps: int, images_done: int) -> None:  # on the generation thread
                try:
                    run.on_step(step, total_steps, images_done)
                except TaskCancelled:
                    loop.call_soon_threadsafe(leave, run)  # runs before the batch's result reaches the loop
                    raise

            return reported

        opened = await self._generation.submit(lambda: self._open_members(runs, inputs, on_step))
        members: dict[int, Run] = {}
        for index, member in opened.items():
            if isinstance(member, Run):
                members[index] = member
            else:  # its inputs did not open: it fails alone
                outcomes[index] = self._ended_without_images(runs[index], member)
        if not members:
            return outcomes
        results: Mapping[int, RunResult | SdapiError | None]
        try:
            results = await self._generation.submit(lambda: self._run_batch(runs, members))
        except TaskCancelled:  # every member left
            results = {}
        except SdapiError as error:
            results = dict.fromkeys(members, error)
        except Exception:
            logger.exception("the batch of %s failed with an unexpected error", ", ".join(r.task_id for r in runs))
            results = dict.fromkeys(members, GenerationFailed(GENERIC_GENERATION_FAILURE, ErrorCode.INTERNAL))
        for index in members:
            run, result = runs[index], results.get(index)
            if run in left:
                continue
            if isinstance(result, RunResult):
                run.generation_done()
                outcomes[index] = result
            elif isinstance(result, SdapiError):
                outcomes[index] = self._ended_without_images(run, result)
            else:  # the engine let it leave without its step reporting so: it was cancelled all the same
                leave(run)
        return outcomes

    def _open_members(
        self,
        runs: list[TaskRun],
        inputs: dict[int, bytes | None],
        on_step: Callable[[TaskRun], Callable[[int, int, int], None]],
    ) -> dict[int, Run | SdapiError]:
        """On the generation thread: each member's inputs decoded, or why they cannot be (that member fails)."""
        opened: dict[int, Run | SdapiError] = {}
        for index, init_bytes in inputs.items():
            run = runs[index]
            try:
                init_image, _ = self._opened_inputs(run.lease.task, init_bytes)
            except SdapiError as error:
                opened[index] = error
                continue
            except Exception:
                logger.exception("task %s: opening its inputs failed unexpectedly", run.task_id)
                opened[index] = GenerationFailed(GENERIC_GENERATION_FAILURE, ErrorCode.INTERNAL)
                continue
            opened[index] = Run(run.lease.task.params, init_image, on_step=on_step(run))
        return opened

    def _run_batch(self, runs: list[TaskRun], members: dict[int, Run]) -> dict[int, RunResult | None]:
        """On the generation thread: run the batch; each member's generation time is its share of the batch's, by
        images (what the queue's estimates and the step metric read)."""
        began = time.perf_counter()
        generated = self._engine.generate_batch(list(members.values()))
        seconds = time.perf_counter() - began
        images = sum(member.params.num_images for member in members.values())
        for index in members:
            runs[index].generation_seconds = seconds * members[index].params.num_images / images
        return dict(zip(members, generated, strict=True))

    def _leave(self, run: TaskRun, began: float) -> None:
        """A run cancelled while its batch goes on: out of the batch's runs, and its outcome written now."""
        if run in self._generating:
            self._generating.remove(run)
        cancelled = self._ended_without_images(run, TaskCancelled(tasks.CANCELLED_MESSAGE))
        finishing = asyncio.get_running_loop().create_task(
            self._finish(run, cancelled, began), name=f"sdapi-finish-{run.task_id}"
        )
        finishing.add_done_callback(_log_unexpected)
        finishing.add_done_callback(lambda _: self._leaving.pop(run, None))
        self._leaving[run] = finishing

    async def _finish_all(self, finishing: list[tuple[TaskRun, RunResult | Task]], began: float) -> None:
        """`_finish` for each run of a batch, side by side (their uploads overlap)."""
        if len(finishing) == 1:
            await self._finish(*finishing[0], began)
            return
        outcomes = await asyncio.gather(
            *(self._finish(run, outcome, began) for run, outcome in finishing), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                logger.error("finishing a task of a batch failed unexpectedly", exc_info=outcome)

    async def _finish(self, run: TaskRun, outcome: RunResult | Task, began: float) -> None:
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

    async def _stored(self, run: TaskRun, generated: RunResult) -> Task:
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
            images = await self._outputs.store(started, generated, keys)
        except SdapiError as error:
            return self._ended_without_images(run, error)
        keys = [image.key for image in images]
        if run.cancel.is_set() or await run.cancel_requested():
            await self._outputs.delete(started.id, keys)
            return self._ended_without_images(run, TaskCancelled(tasks.CANCELLED_MESSAGE))
        facts = generated.facts
        completed = tasks.complete(started, keys, facts.engine, images=tuple(images), scheduler=facts.scheduler)
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


def _observe_queue_wait(started: Task) -> None:
    """How long a task that just started had waited in the queue (sdapi_queue_wait_seconds)."""
    if started.started_at is not None:
        metrics.QUEUE_WAIT.observe((started.started_at - started.created_at).total_seconds())


def _log_unexpected(finishing: asyncio.Task[None]) -> None:
    """A finishing step that raised what it should have turned into an outcome: say so (its lease expires and the
    reaper gives the task another run)."""
    if not finishing.cancelled() and (error := finishing.exception()) is not None:
        logger.error("finishing a task failed unexpectedly", exc_info=error)
