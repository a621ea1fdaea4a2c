"""Tasks as clients see them: submitting, reading, waiting for, listing, cancelling and re-running them, and their
callback log, as the HTTP routes and the compatibility dialects call them. No HTTP here."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn

import msgspec

from sdapi.background.wakeup import Signals
from sdapi.config import Config
from sdapi.core import tasks
from sdapi.core.callers import SERVICE, Caller
from sdapi.core.deliveries import Delivery, delivery_for, redelivery
from sdapi.core.request import GenerationRequest
from sdapi.core.results import public_base_url, result_urls
from sdapi.core.styles import Style
from sdapi.core.tasks import Task, TaskStatus, create
from sdapi.errors import (
    TASK_NOT_FOUND_MESSAGE,
    DeliveryInProgress,
    IdempotencyKeyReused,
    InvalidParameter,
    NoCallback,
    QueueFull,
    TaskAlreadyFinished,
    TaskNotFound,
)
from sdapi.observability import metrics, tracing
from sdapi.observability.logs import current_request_id, task_context
from sdapi.previews import Preview
from sdapi.previews.board import PreviewBoard
from sdapi.service.admission import RequestChecks
from sdapi.service.estimates import StartEstimator
from sdapi.service.quotas import RateLimiter
from sdapi.service.watch import TaskWatch
from sdapi.storage import ImageStorage
from sdapi.store import IdempotencyKey, Stores, TaskRecord

# The logger keeps the name it had before the package split: operators filter logs on it.
logger = logging.getLogger("sdapi.service")

QUEUE_FULL_MESSAGE = "任务队列已满，请稍后重试"
# Most tasks on one page of GET /api/v1/tasks.
MAX_PAGE = 100
# An event stream with nothing to say sends a keep-alive this often (proxies close silent connections).
EVENT_KEEPALIVE_SECONDS = 15.0


@dataclass(frozen=True)
class TaskView:
    """A task as a client reads it: the task, its callback delivery, its result URLs (the contract's rule) and,
    while pending, its place in the queue."""

    task: Task
    delivery: Delivery | None
    result_url: str | None
    result_urls: list[str] | None
    queue_position: int | None = None
    estimated_start_at: datetime | None = None
    # The URL of each of task.images, in order.
    image_urls: list[str] | None = None


@dataclass(frozen=True)
class TaskPage:
    """One page of a task listing, newest first; `next_cursor` continues it (None on the last page)."""

    tasks: list[TaskView]
    next_cursor: str | None


def fingerprint(request: GenerationRequest) -> str:
    """The request's canonical JSON (sorted keys, defaults applied), hashed: equal requests, equal fingerprints."""
    return hashlib.sha256(msgspec.json.encode(request, order="sorted")).hexdigest()


_CURSOR = re.compile(r"seq:([0-9]{1,18})", re.ASCII)


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The queue position a cursor continues after; raise InvalidParameter for anything not made by encode_cursor."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        text = ""
    # ASCII digits, at most 18 of them: a queue position both databases' 64-bit integers hold.
    found = _CURSOR.fullmatch(text)
    if found is not None:
        return int(found[1])
    raise InvalidParameter("cursor", "cursor 无效：请使用上一页返回的 next_cursor")


class TaskService:
    """Admits generation requests as tasks and reads tasks back."""

    def __init__(
        self,
        config: Config,
        stores: Stores,
        storage: ImageStorage,
        checks: RequestChecks,
        estimator: StartEstimator,
        watch: TaskWatch,
        signals: Signals,
        previews: PreviewBoard | None = None,
    ) -> None:
        self._config = config
        self._previews = previews
        self._tasks = stores.tasks
        self._init_images = stores.init_images
        self._outbox = stores.outbox
        self._storage = storage
        self._checks = checks
        self._estimator = estimator
        self._watch = watch
        self._signals = signals
        self._rates = RateLimiter()

    async def submit(
        self,
        request: GenerationRequest,
        base_url: str | None,
        caller: Caller = SERVICE,
        idempotency_key: str | None = None,
        dialect: str = "native",
    ) -> Task:
        """Check `request` (sdapi.service.admission), store it as a pending task of `caller` (made through
        `dialect`, by the current request id) and wake the worker; raise InvalidParameter, or QueueFull when the
        queue, the caller's pending limit or its rate is spent.

        With an `idempotency_key` this caller already used (within api.idempotency_ttl_hours) for the same request,
        nothing is added and the task it made is returned; for a different request, IdempotencyKeyReused."""
        self._check_rate(caller)
        admitted_request = await self._checks.check(request)
        params, init_bytes = admitted_request.params, admitted_request.init_image
        task = create(
            params,
            base_url=base_url,
            owner=caller.name,
            request_id=current_request_id(),
            dialect=dialect,
            traceparent=tracing.current_traceparent(),
        )
        limits = (self._config.queue.max_pending, caller.max_pending)
        if idempotency_key is not None:
            key = IdempotencyKey(
                owner=caller.name,
                key=idempotency_key,
                fingerprint=fingerprint(request),
                ttl_seconds=self._config.api.idempotency_ttl_hours * 3600,
            )
            admission = await self._tasks.add_once(task, init_bytes, *limits, key)
            if admission.existing_task_id is not None:
                if not admission.same_request:
                    raise IdempotencyKeyReused(
                        "Idempotency-Key 已用于另一个不同的请求：请为新请求使用新的 Idempotency-Key"
                    )
                logger.info("idempotent retry: task %s already exists", admission.existing_task_id)
                return await self._tasks.get(admission.existing_task_id)
            admitted = admission.admitted
        else:
            admitted = await self._tasks.add(task, init_bytes, *limits)
        if not admitted:
            await self._refuse(caller)
        self._created(task)
        return task

    async def rerun(self, task_id: str, base_url: str | None, caller: Caller = SERVICE) -> Task:
        """A new task with exactly the parameters and seeds of `task_id` (so, on the same model and engine, the
        same pixels), owned by `caller`. An image-to-image task can run again only while its init image is kept
        (until it ends)."""
        self._check_rate(caller)
        original = await self._tasks.get(task_id)
        if not caller.sees(original.owner):
            raise TaskNotFound(TASK_NOT_FOUND_MESSAGE)
        init_bytes = None
        if original.params.keeps_images:
            init_bytes = await self._init_images.get(task_id)
            if init_bytes is None:
                raise InvalidParameter(
                    "task_id", "图生图任务结束后不保留 init_image，无法重新运行：请用原图重新提交 POST /api/v1/generate"
                )
        task = create(original.params, base_url=base_url, owner=caller.name, request_id=current_request_id())
        if not await self._tasks.add(task, init_bytes, self._config.queue.max_pending, caller.max_pending):
            await self._refuse(caller)
        self._created(task)
        return task

    def _check_rate(self, caller: Caller) -> None:
        if caller.requests_per_minute is not None:
            wait = self._rates.admit(caller.name, caller.requests_per_minute)
            if wait is not None:
                raise QueueFull(
                    f"请求过于频繁：此 API Key 每分钟最多提交 {caller.requests_per_minute} 个任务"
                    "（api.keys[].requests_per_minute）",
                    retry_after=wait,
                )

    async def _refuse(self, caller: Caller) -> NoReturn:
        """Raise the QueueFull of a refused admission, naming the limit that was reached."""
        retry_after = self._config.queue.retry_after_seconds
        if caller.max_pending is not None and (
            await self._tasks.count(TaskStatus.PENDING, caller.name) >= caller.max_pending
        ):
            raise QueueFull(
                f"此 API Key 排队中的任务已达上限 {caller.max_pending} 个（api.keys[].max_pending），请稍后重试",
                retry_after=retry_after,
            )
        raise QueueFull(QUEUE_FULL_MESSAGE, retry_after=retry_after)

    def _created(self, task: Task) -> None:
        params = task.params
        with task_context(task.id, task.request_id):
            logger.info(
                "task %s created (%s): %s %dx%d x%d, %d steps%s",
                task.id,
                task.dialect,
                "img2img" if params.is_image_to_image else "txt2img",
                params.width,
                params.height,
                params.num_images,
                params.num_inference_steps,
                f", prompt {params.prompt!r}" if self._config.log_prompts else "",
            )
        metrics.TASKS_SUBMITTED.labels(dialect=task.dialect).inc()
        self._signals.task_added()

    async def get(self, task_id: str, request_base_url: str | None, caller: Caller = SERVICE) -> TaskView:
        """The task with this id as `caller` sees it from `request_base_url`; raise TaskNotFound (also for a task
        of another key, under api.isolation per_key)."""
        record = await self._tasks.read(task_id)
        if not caller.sees(record.task.owner):
            raise TaskNotFound(TASK_NOT_FOUND_MESSAGE)
        return await self._view(record, request_base_url)

    async def wait(
        self, task_id: str, seconds: float, request_base_url: str | None, caller: Caller = SERVICE
    ) -> TaskView:
        """`get`, once the task has ended or `seconds` have passed, whichever is first."""
        deadline = time.monotonic() + seconds
        async with self._watch.watching(task_id) as next_change:
            view = await self.get(task_id, request_base_url, caller)
            while not view.task.status.is_terminal and (left := deadline - time.monotonic()) > 0:
                if await next_change(left):
                    view = await self.get(task_id, request_base_url, caller)
        return view

    async def events(
        self, task_id: str, request_base_url: str | None, caller: Caller = SERVICE
    ) -> AsyncIterator[tuple[str, TaskView, Preview | None]]:
        """The task's changes as (event, view, preview): "status" first and whenever the status changes, "progress"
        when only the progress moved, "preview" with each new live preview while it runs, and a final "done" once it
        has ended. Raise TaskNotFound before the first.

        Each quiet keepalive period ends with a read of the task as well: the stream ends on the task's end even if
        every wake-up were lost, at most one period late."""
        shown = 0  # the step of the last preview sent
        async with self._watch.watching(task_id) as next_change:
            view = await self.get(task_id, request_base_url, caller)
            yield "status", view, None
            while not view.task.status.is_terminal:
                changed = await next_change(EVENT_KEEPALIVE_SECONDS)
                previous, view = view, await self.get(task_id, request_base_url, caller)
                preview = await self.latest_preview(view)
                if view.task.status is not previous.task.status:
                    yield "status", view, None
                elif view.task.progress != previous.task.progress:
                    yield "progress", view, None
                elif not changed and (preview is None or preview.step <= shown):
                    yield "keepalive", view, None
                if preview is not None and preview.step > shown:  # (a running task's alone: latest_preview)
                    shown = preview.step
                    yield "preview", view, preview
            yield "done", view, None

    async def styles(self) -> list[Style]:
        """The prompt styles requests may name (styles.file)."""
        return await asyncio.to_thread(self._checks.styles.listed)

    async def latest_preview(self, view: TaskView) -> Preview | None:
        """The latest live preview of a running task (sdapi.previews), or None: not running, none drawn yet, or
        previews off."""
        if self._previews is None or view.task.status is not TaskStatus.PROCESSING:
            return None
        return await self._previews.latest(view.task.id)

    async def stop(self) -> None:
        await self._watch.stop()

    async def image_bytes(self, view: TaskView) -> list[bytes]:
        """The stored bytes of a completed task's images, in order (for dialects that answer with the images)."""
        return [await asyncio.to_thread(self._storage.read, key) for key in view.task.result_keys]

    async def callback_log(self, task_id: str, caller: Caller = SERVICE) -> Delivery:
        """The task's callback delivery, with every attempt; raise TaskNotFound, or NoCallback."""
        view = await self.get(task_id, None, caller)
        if view.delivery is None:
            raise NoCallback(self._no_callback_message(view.task))
        return view.delivery

    async def redeliver(self, task_id: str, caller: Caller = SERVICE) -> Delivery:
        """Send an ended task's callback again, as a new delivery (a new webhook-id); raise TaskNotFound,
        NoCallback, or DeliveryInProgress while the current delivery is still being tried."""
        previous = await self.callback_log(task_id, caller)
        delivery = redelivery(previous, time.time())
        if not await self._outbox.redeliver(previous, delivery):
            raise DeliveryInProgress("回调仍在投递中（pending），无需重新发送：请等它结束后再试")
        logger.info("task %s: callback redelivery requested as %s", task_id, delivery.id)
        self._signals.delivery_due()
        return delivery

    @staticmethod
    def _no_callback_message(task: Task) -> str:
        if task.params.callback_url is None:
            return "该任务没有 callback_url，没有回调"
        return "任务尚未结束，还没有回调"

    async def list(
        self,
        caller: Caller,
        request_base_url: str | None,
        status: TaskStatus | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> TaskPage:
        """The caller's tasks (every task for an admin), newest first, `limit` per page from `cursor`."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidParameter("limit", f"limit 须在 1 到 {MAX_PAGE} 之间")
        before = None if cursor is None else decode_cursor(cursor)
        records = await self._tasks.list_tasks(caller.owner_filter, status, before, limit + 1)
        views = [await self._view(record, request_base_url) for record in records[:limit]]
        more = len(records) > limit
        return TaskPage(tasks=views, next_cursor=encode_cursor(records[limit - 1].seq) if more else None)

    async def _view(self, record: TaskRecord, request_base_url: str | None) -> TaskView:
        base_url = public_base_url(self._config.server.public_base_url, request_base_url)
        single, several = result_urls(record.task, self._storage, base_url)
        estimated = None
        if record.work_ahead is not None:
            estimated = await self._estimator.estimate(record.work_ahead)
        return TaskView(
            task=record.task,
            delivery=record.delivery,
            result_url=single,
            result_urls=several,
            queue_position=record.queue_position,
            estimated_start_at=estimated,
            image_urls=[self._storage.url(image.key, base_url) for image in record.task.images],
        )

    async def skip_current_image(self, task_id: str, caller: Caller = SERVICE) -> bool:
        """Ask a processing task's worker to end its current image early and go on with the next (A1111's skip:
        the image comes out as far as it got); False when the task is not running. Raise TaskNotFound."""
        task = await self._tasks.get(task_id)
        if not caller.sees(task.owner):
            raise TaskNotFound(TASK_NOT_FOUND_MESSAGE)
        if task.status is not TaskStatus.PROCESSING or not await self._tasks.request_skip(task_id):
            return False
        logger.info("task %s: skipping its current image was requested", task_id)
        self._signals.cancel_requested()  # the worker reports at once, and learns of it
        return True

    async def cancel(self, task_id: str, request_base_url: str | None, caller: Caller = SERVICE) -> TaskView:
        """Cancel a task: a pending one ends now (failed, error_code cancelled, its callback sent); a processing one
        is asked to stop, which its worker does at its next denoising step. Raise TaskNotFound, or
        TaskAlreadyFinished when it has ended."""
        task = await self._tasks.get(task_id)
        if not caller.sees(task.owner):
            raise TaskNotFound(TASK_NOT_FOUND_MESSAGE)
        if task.status is TaskStatus.PENDING:
            cancelled = tasks.cancel(task)
            delivery = delivery_for(cancelled, time.time())
            if await self._tasks.cancel_pending(task, cancelled, delivery):
                with task_context(task_id, task.request_id):
                    logger.info("task %s cancelled while pending", task_id)
                metrics.TASKS_FAILED.labels(dialect=task.dialect, error_code="cancelled").inc()
                if delivery is not None:
                    self._signals.delivery_due()
                return await self.get(task_id, request_base_url, caller)
            task = await self._tasks.get(task_id)  # a worker took it meanwhile
        if task.status is TaskStatus.PROCESSING and await self._tasks.request_cancel(task_id):
            logger.info("task %s: cancel requested while processing", task_id)
            self._signals.cancel_requested()
            return await self.get(task_id, request_base_url, caller)
        finished = await self._tasks.get(task_id)
        raise TaskAlreadyFinished(f"任务已结束（{finished.status.value}），无法取消")
