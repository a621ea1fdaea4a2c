"""A run's end: its images stored (off the generation thread), its outcome settled in the task store while the lease
is ours, with its callback delivery in the same write, and its metrics counted. Writing an outcome is retried while
the store fails (an outage of the database is not the task's fault)."""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec

from sdapi.background.retries import until_written
from sdapi.background.wakeup import Signals
from sdapi.config import Config
from sdapi.core import tasks
from sdapi.core.deliveries import delivery_for
from sdapi.core.tasks import Task, TaskStatus
from sdapi.engines import RunResult
from sdapi.errors import SdapiError, TaskCancelled, TaskStoreError
from sdapi.observability import metrics, tracing
from sdapi.observability.logs import task_context
from sdapi.store import Lease, Stores
from sdapi.worker.outputs import Outputs
from sdapi.worker.run import TaskRun

logger = logging.getLogger("sdapi.worker")

# Settling a finished run is retried while the task store fails: waits double from the first to the last value
# and stay there, until the write succeeds, finds the lease lost, or the worker's stop gives up on the task.
RECORD_RETRY_FIRST_SECONDS = 0.1
RECORD_RETRY_MAX_SECONDS = 5.0
_RECORD_RETRY = (RECORD_RETRY_FIRST_SECONDS, RECORD_RETRY_MAX_SECONDS)


def ended_without_images(run: TaskRun, error: SdapiError) -> Task:
    """The outcome of a run that made no images: cancelled, or failed with a user-safe message and its code."""
    started = run.lease.task
    if isinstance(error, TaskCancelled):
        logger.info("task %s cancelled", started.id)
        return msgspec.structs.replace(tasks.cancel(started), progress=run.progress)
    # GenerationFailed, StorageError, TaskStoreError...: a result, not a crash
    logger.warning("task %s failed: %s", started.id, error.message)
    return tasks.fail(started, error.message, error.error_code)


class Finisher:
    """Stores a run's images and writes its outcome."""

    def __init__(self, config: Config, stores: Stores, outputs: Outputs, signals: Signals) -> None:
        self._config = config
        self._tasks = stores.tasks
        self._throughput = stores.throughput
        self._outputs = outputs
        self._signals = signals

    async def finish_all(self, finishing: list[tuple[TaskRun, RunResult | Task]], began: float) -> None:
        """`finish` for each run of a batch, side by side (their uploads overlap)."""
        if len(finishing) == 1:
            await self.finish(*finishing[0], began)
            return
        outcomes = await asyncio.gather(
            *(self.finish(run, outcome, began) for run, outcome in finishing), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                logger.error("finishing a task of a batch failed unexpectedly", exc_info=outcome)

    async def finish(self, run: TaskRun, outcome: RunResult | Task, began: float) -> None:
        """Store the images (off the generation thread), then write the outcome while the lease is ours."""
        started = run.lease.task
        with task_context(started.id, started.request_id, started.traceparent):
            try:
                finished = outcome if isinstance(outcome, Task) else await self._stored(run, outcome)
                settling = time.time()
                settled = await self.settle_until_written(run.lease, finished)
                tracing.record(
                    "sdapi.settle",
                    started.traceparent,
                    settling,
                    time.time(),
                    status=finished.status,
                )
                if settled:
                    elapsed = time.perf_counter() - began
                    logger.info("task %s %s in %.2fs", started.id, finished.status, elapsed)
                    self.count(finished, run, elapsed)
                    await self._measure(finished, run)
                else:
                    logger.warning(
                        "task %s: lease lost before its outcome was written; nothing recorded, nothing sent",
                        finished.id,
                    )
                    await self._outputs.delete(finished.id, finished.result_keys)
            finally:
                run.stop_reporting()
                await run.end_previews()

    async def _stored(self, run: TaskRun, generated: RunResult) -> Task:
        """The task completed with its stored images; cancelled (its images removed again) when a cancel was asked
        for meanwhile; failed when storing failed."""
        started = run.lease.task
        try:
            keys = self._outputs.new_keys(started, len(generated.images))
            # Recorded before any upload: if this process dies before the outcome is written, the reaper deletes
            # these keys with the expired lease, so no stored image is left that no task refers to.
            if not await self._stage_until_written(run.lease, keys):
                return ended_without_images(run, TaskStoreError("任务租约已失效：另一个 worker 接手了此任务"))
            run.staged_keys = keys
            images = await self._outputs.store(started, generated, keys)
        except SdapiError as error:
            return ended_without_images(run, error)
        keys = [image.key for image in images]
        if run.cancel.is_set() or await run.cancel_requested():
            await self._outputs.delete(started.id, keys)
            return ended_without_images(run, TaskCancelled(tasks.CANCELLED_MESSAGE))
        facts = generated.facts
        completed = tasks.complete(started, keys, facts.engine, images=tuple(images), scheduler=facts.scheduler)
        return msgspec.structs.replace(completed, progress=run.progress)

    def count(self, finished: Task, run: TaskRun | None, elapsed: float) -> None:
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

    async def settle(self, lease: Lease, task: Task) -> bool:
        """Write the task's new state while the lease is ours; a finished task with a callback_url gets its delivery
        in the same write. False: the lease was lost, nothing was written."""
        delivery = delivery_for(task, time.time())
        written = await self._tasks.settle(lease, task, delivery)
        if written:
            self._signals.task_changed(task.id)
            if delivery is not None:
                self._signals.delivery_due()
        return written

    async def settle_until_written(self, lease: Lease, task: Task) -> bool:
        """`settle`, retried while the task store fails (see RECORD_RETRY_*), until it answers or is cancelled."""
        what = f"task {task.id}: recording {task.status}"
        return await until_written(lambda: self.settle(lease, task), what, *_RECORD_RETRY, logger)

    async def _stage_until_written(self, lease: Lease, keys: list[str]) -> bool:
        """Record the keys about to be uploaded, retried as settling is; False when the lease was lost."""
        what = f"task {lease.task.id}: staging its images"
        return await until_written(lambda: self._tasks.stage(lease, keys), what, *_RECORD_RETRY, logger)
