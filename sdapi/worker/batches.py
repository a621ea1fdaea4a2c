"""Cross-request batching on the worker: the pending tasks that can share a claimed task's denoising batch
(sdapi.core.batching decides which), claimed while the batch has room, and the batch run as one engine call, each
member's images or outcome coming back on its own. A member cancelled mid-batch leaves it at once; the rest go on."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from sdapi.background.wakeup import Wakeup
from sdapi.config import QueueConfig
from sdapi.core.batching import batch_key
from sdapi.core.tasks import Task
from sdapi.engines import Run, RunResult, StepCallback, WorkerEngine
from sdapi.errors import GENERIC_GENERATION_FAILURE, ErrorCode, GenerationFailed, SdapiError, TaskCancelled
from sdapi.observability import metrics, tracing
from sdapi.store import Lease, TaskStore
from sdapi.worker.finishing import ended_without_images
from sdapi.worker.generation_thread import GenerationThread
from sdapi.worker.inputs import TaskInputs
from sdapi.worker.run import TaskRun

logger = logging.getLogger("sdapi.worker")


def observe_queue_wait(started: Task) -> None:
    """How long a task that just started had waited in the queue (sdapi_queue_wait_seconds)."""
    if started.started_at is not None:
        metrics.QUEUE_WAIT.observe((started.started_at - started.created_at).total_seconds())


class Batches:
    """Claims a batch's companions and runs a batch on the generation thread."""

    def __init__(
        self,
        queue: QueueConfig,
        task_store: TaskStore,
        engine: WorkerEngine,
        generation: GenerationThread,
        inputs: TaskInputs,
        worker_id: str,
    ) -> None:
        self._queue = queue
        self._tasks = task_store
        self._engine = engine
        self._generation = generation
        self._inputs = inputs
        self._worker_id = worker_id

    async def companions(
        self,
        first: TaskRun,
        start_run: Callable[[Lease], TaskRun],
        stopping: Callable[[], bool],
        wakeup: Wakeup,
    ) -> list[TaskRun]:
        """The runs of the pending tasks that can share `first`'s denoising batch (queue.batch_max images in all),
        claimed now and for up to queue.batch_wait_ms more while the batch has room; none when batching is off or
        `first` always runs alone. `start_run` starts each claimed task's run; `wakeup` is nudged by a submit."""
        task = first.lease.task
        room = self._queue.batch_max - task.params.num_images
        if room < 1 or batch_key(task.params) is None:
            return []
        deadline = time.monotonic() + self._queue.batch_wait_ms / 1000
        companions: list[TaskRun] = []
        while room > 0 and not stopping():
            try:
                leases = await self._tasks.claim_companions(self._worker_id, self._queue.lease_seconds, task, room)
            except SdapiError as error:  # the batch runs with what it has
                logger.error("worker: claiming companions for task %s failed: %s", task.id, error.message)
                break
            for lease in leases:
                observe_queue_wait(lease.task)
                companions.append(start_run(lease))
                room -= lease.task.params.num_images
            left = deadline - time.monotonic()
            if room < 1 or left <= 0:
                break
            await wakeup.sleep(left)
        if companions:
            logger.info("task %s runs in one batch with %s", task.id, ", ".join(run.task_id for run in companions))
        return companions

    async def generate(self, runs: list[TaskRun], leave: Callable[[TaskRun], None]) -> list[RunResult | Task | None]:
        """Each run's images, or its outcome when it ended without them; None for a run that left the batch
        (cancelled): `leave(run)` was called for it on the event loop, and writes its outcome."""
        outcomes: list[RunResult | Task | None] = [None] * len(runs)
        inputs: dict[int, bytes | None] = {}
        for index, run in enumerate(runs):
            try:
                inputs[index] = await self._inputs.stored(run.lease.task)
            except SdapiError as error:
                outcomes[index] = ended_without_images(run, error)
        left: set[TaskRun] = set()
        loop = asyncio.get_running_loop()

        def leaving(run: TaskRun) -> None:  # on the event loop
            left.add(run)
            leave(run)

        def on_step(run: TaskRun) -> StepCallback:
            def reported(step: int, total_steps: int, images_done: int) -> None:  # on the generation thread
                try:
                    run.on_step(step, total_steps, images_done)
                except TaskCancelled:
                    loop.call_soon_threadsafe(leaving, run)  # runs before the batch's result reaches the loop
                    raise

            return reported

        opened = await self._generation.submit(lambda: self._open(runs, inputs, on_step))
        members: dict[int, Run] = {}
        for index, member in opened.items():
            if isinstance(member, Run):
                members[index] = member
            else:  # its inputs did not open: it fails alone
                outcomes[index] = ended_without_images(runs[index], member)
        if not members:
            return outcomes
        results: Mapping[int, RunResult | SdapiError | None]
        try:
            results = await self._generation.submit(lambda: self._run(runs, members))
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
                outcomes[index] = ended_without_images(run, result)
            else:  # the engine let it leave without its step reporting so: it was cancelled all the same
                leaving(run)
        return outcomes

    def _open(
        self,
        runs: list[TaskRun],
        inputs: dict[int, bytes | None],
        on_step: Callable[[TaskRun], StepCallback],
    ) -> dict[int, Run | SdapiError]:
        """On the generation thread: each member's Run with its inputs decoded, or why they cannot be (that member
        fails)."""
        opened: dict[int, Run | SdapiError] = {}
        for index, packed in inputs.items():
            run = runs[index]
            try:
                opened[index] = self._inputs.opened(run.lease.task, packed, on_step(run))
            except SdapiError as error:
                opened[index] = error
            except Exception:
                logger.exception("task %s: opening its inputs failed unexpectedly", run.task_id)
                opened[index] = GenerationFailed(GENERIC_GENERATION_FAILURE, ErrorCode.INTERNAL)
        return opened

    def _run(self, runs: list[TaskRun], members: dict[int, Run]) -> dict[int, RunResult | None]:
        """On the generation thread: run the batch; each member's generation time is its share of the batch's, by
        images (what the queue's estimates and the step metric read)."""
        began, denoise_began = time.perf_counter(), time.time()
        generated = self._engine.generate_batch(list(members.values()))
        seconds = time.perf_counter() - began
        images = sum(member.params.num_images for member in members.values())
        for index in members:
            runs[index].generation_seconds = seconds * members[index].params.num_images / images
            task = runs[index].lease.task
            # Each member's trace shows the whole batch's denoising, and how many tasks shared it.
            traceparent = task.traceparent
            tracing.record("sdapi.denoise", traceparent, denoise_began, time.time(), batch_tasks=len(members))
        return dict(zip(members, generated, strict=True))
