"""The worker's task loop: claims a pending task under a lease (preferring the models it has loaded: affinity), with
the companions that may share its denoising batch (batches.py), runs the engine on the generation thread, and hands
the generated images to their finishing step (finishing.py: store, settle the outcome with its callback delivery in
the same write), which overlaps the next generation. At most one run (or batch) is finishing while the next one
generates: a bounded hand-off.

If this process stops renewing a lease (it died, or froze past the lease), the reaper hands the task to another
worker; a frozen worker that wakes up finds its lease gone: its settle writes nothing, so it sends no callback, and
it deletes the images it uploaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from sdapi.background.wakeup import Signals, Wakeup
from sdapi.config import Config
from sdapi.core import tasks
from sdapi.core.nodes import NodeInfo
from sdapi.core.tasks import Task
from sdapi.engines import RunResult, WorkerEngine
from sdapi.errors import GENERIC_GENERATION_FAILURE, ErrorCode, ModelLoadFailed, SdapiError, TaskCancelled
from sdapi.observability import metrics, tracing
from sdapi.observability.logs import task_context
from sdapi.previews.board import PreviewBoard
from sdapi.store import Lease, Stores
from sdapi.worker.batches import Batches, observe_queue_wait
from sdapi.worker.finishing import Finisher, ended_without_images
from sdapi.worker.generation_thread import GenerationThread
from sdapi.worker.inputs import TaskInputs
from sdapi.worker.model_loads import FailedLoads
from sdapi.worker.outputs import Outputs
from sdapi.worker.run import TaskRun

# The logger keeps the name it had before the package split: operators filter logs on it.
logger = logging.getLogger("sdapi.worker")

# How often the idle worker looks at the store even without a wake-up (tasks added by another process).
IDLE_POLL_SECONDS = 1.0


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
        previews: PreviewBoard | None = None,
    ) -> None:
        self._config = config
        self._previews = previews
        self._tasks = stores.tasks
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
        self._inputs = TaskInputs(stores.init_images, config.annotators_path)
        self._finisher = Finisher(config, stores, outputs, signals)
        self._batches = Batches(config.queue, stores.tasks, engine, self._generation, self._inputs, worker_id)
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
                if await self._finisher.settle(run.lease, tasks.retry(run.lease.task, count_attempt=False)):
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
                    claiming = time.time()
                    lease = await self._tasks.claim(
                        self._worker_id,
                        self._lease_seconds,
                        self._engine.loaded_models(),
                        self._config.queue.affinity_max_wait_seconds,
                        skip,
                    )
                    if lease is not None:
                        traceparent = lease.task.traceparent
                        tracing.record("sdapi.queue_wait", traceparent, lease.task.created_at, claiming)
                        tracing.record("sdapi.claim", traceparent, claiming, time.time(), worker=self._worker_id)
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
        with task_context(
            started.id, started.request_id, started.traceparent
        ):  # every line about this run names the task
            default = self._config.default_model.name
            model = started.params.model or default
            if self._must_load(model):
                await self._requeue_while_loading(lease, model)
                return
            observe_queue_wait(started)
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
            await self._finisher.settle_until_written(lease, tasks.retry(lease.task, count_attempt=False))
            return
        failed = tasks.fail(lease.task, failure, ErrorCode.MODEL_NOT_LOADED)
        if await self._finisher.settle_until_written(lease, failed):
            self._finisher.count(failed, None, 0.0)

    async def _live_nodes(self) -> list[NodeInfo]:
        return await self._nodes.live(self._lease_seconds)

    async def _generate_then_hand_off(self, lease: Lease) -> None:
        """Generate the task's images on the generation thread (with its companions' when queue.batch_max lets
        compatible tasks share the batch), then start their finishing and return, so the loop can claim the next
        task while these images are stored. Waits first for the previous finishing, if any."""
        first = self._start_run(lease)
        began = time.perf_counter()
        try:
            runs = [first, *await self._batches.companions(first, self._start_run, self._is_stopping, self._wakeup)]
            if len(runs) == 1:
                outcomes: list[RunResult | Task | None] = [await self._generate(first)]
            else:
                outcomes = await self._batches.generate(runs, lambda run: self._leave(run, began))
            metrics.BATCH_TASKS.observe(len(runs))
            if self._finishing is not None:
                await asyncio.shield(self._finishing[1])  # the bound: one run (or batch) finishing at a time
            # A run that left its batch (outcome None) is being finished already.
            finishing_runs = [
                (run, outcome) for run, outcome in zip(runs, outcomes, strict=True) if outcome is not None
            ]
            finishing = asyncio.get_running_loop().create_task(
                self._finisher.finish_all(finishing_runs, began), name=f"sdapi-finish-{first.task_id}"
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
        run = TaskRun(lease, self._tasks, self._lease_seconds, self._signals, self._previews)
        self._generating.append(run)
        run.start_reporting()
        return run

    def _is_stopping(self) -> bool:
        return self._stopping

    async def _generate(self, run: TaskRun) -> RunResult | Task:
        """The engine's images for a started task, or the task's outcome when it ended without them (cancelled, or
        failed with a user-safe message and its error code)."""
        started = run.lease.task
        try:
            packed = await self._inputs.stored(started)
            generated = await self._generation.submit(lambda: self._run_engine(started, packed, run))
            run.generation_done()
            return generated
        except SdapiError as error:
            return ended_without_images(run, error)
        except Exception:
            logger.exception("task %s failed with an unexpected error", started.id)
            return tasks.fail(started, GENERIC_GENERATION_FAILURE, ErrorCode.INTERNAL)

    def _run_engine(self, task: Task, packed: bytes | None, run: TaskRun) -> RunResult:
        """On the generation thread: decode the task's inputs and run the engine. Nothing else happens here."""
        opened = self._inputs.opened(task, packed, run.on_step)
        began, denoise_began = time.perf_counter(), time.time()
        generated = self._engine.generate(opened)
        run.generation_seconds = time.perf_counter() - began
        tracing.record(
            "sdapi.denoise",
            task.traceparent,
            denoise_began,
            time.time(),
            engine=generated.facts.engine,
            steps=task.params.num_inference_steps,
            images=task.params.num_images,
        )
        return generated

    def _leave(self, run: TaskRun, began: float) -> None:
        """A run cancelled while its batch goes on: out of the batch's runs, and its outcome written now."""
        if run in self._generating:
            self._generating.remove(run)
        cancelled = ended_without_images(run, TaskCancelled(tasks.CANCELLED_MESSAGE))
        finishing = asyncio.get_running_loop().create_task(
            self._finisher.finish(run, cancelled, began), name=f"sdapi-finish-{run.task_id}"
        )
        finishing.add_done_callback(_log_unexpected)
        finishing.add_done_callback(lambda _: self._leaving.pop(run, None))
        self._leaving[run] = finishing

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
        if await self._finisher.settle_until_written(lease, tasks.retry(lease.task, count_attempt=False)):
            self._signals.task_changed(lease.task.id)
        logger.info("task %s waits in the queue while model %s loads", lease.task.id, model)
        loading = time.time()
        try:
            await self._generation.submit(lambda: self._engine.prepare(model))
            tracing.record("sdapi.model_load", lease.task.traceparent, loading, time.time(), model=model)
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


def _log_unexpected(finishing: asyncio.Task[None]) -> None:
    """A finishing step that raised what it should have turned into an outcome: say so (its lease expires and the
    reaper gives the task another run)."""
    if not finishing.cancelled() and (error := finishing.exception()) is not None:
        logger.error("finishing a task failed unexpectedly", exc_info=error)
