"""Submitting and reading tasks: what the HTTP routes call. No HTTP here."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sdapi import tasks
from sdapi.callbacks.ssrf import CallbackPolicy, Resolver, resolve_target, system_resolver
from sdapi.config import Config
from sdapi.deliveries import Delivery, delivery_for
from sdapi.errors import QueueFull, TaskAlreadyFinished
from sdapi.images import decode_init_image
from sdapi.loras.library import LoraLibrary
from sdapi.params import GenerationParams, InitImageInfo, resolve_params
from sdapi.request import GenerationRequest
from sdapi.results import public_base_url, result_urls
from sdapi.storage import ImageStorage
from sdapi.store import TaskStore
from sdapi.tasks import Task, TaskStatus, create

logger = logging.getLogger(__name__)

QUEUE_FULL_MESSAGE = "任务队列已满，请稍后重试"


@dataclass(frozen=True)
class TaskView:
    """A task as a client reads it: the task, its callback delivery, and its result URLs (the contract's rule)."""

    task: Task
    delivery: Delivery | None
    result_url: str | None
    result_urls: list[str] | None


class TaskService:
    """Admits generation requests as tasks and reads tasks back."""

    def __init__(
        self,
        config: Config,
        task_store: TaskStore,
        storage: ImageStorage,
        wake_worker: Callable[[], None],
        wake_sender: Callable[[], None],
        check_cancel: Callable[[], None],
        callback_policy: CallbackPolicy,
        library: LoraLibrary,
        check_engine: Callable[[GenerationParams], None],
        resolver: Resolver = system_resolver,
    ) -> None:
        self._config = config
        self._tasks = task_store
        self._storage = storage
        self._wake_worker = wake_worker
        self._wake_sender = wake_sender
        self._check_cancel = check_cancel
        self._callback_policy = callback_policy
        self._library = library
        self._check_engine = check_engine
        self._resolver = resolver

    async def submit(self, request: GenerationRequest, base_url: str | None) -> Task:
        """Validate `request`, store it as a pending task and wake the worker; raise InvalidParameter or QueueFull."""
        init_bytes: bytes | None = None
        init_info: InitImageInfo | None = None
        if request.init_image is not None:
            # Decoding a large image takes a while: off the event loop, so other requests are not held up.
            init_bytes, init_info = await asyncio.to_thread(
                decode_init_image, request.init_image, self._config.limits.max_init_image_pixels
            )
        loras = self._library.resolve(request.loras or [])
        params = resolve_params(request, self._config.defaults, self._config.limits, init_info, loras=loras)
        self._check_engine(params)
        if params.callback_url is not None:
            # Refused here, with a 400, rather than silently dropped when the task ends.
            await resolve_target(
                params.callback_url, self._callback_policy, self._resolver, self._config.callbacks.resolve_timeout
            )
        task = create(params, base_url=base_url)
        if not await self._tasks.add(task, init_bytes, self._config.queue.max_pending):
            raise QueueFull(QUEUE_FULL_MESSAGE, retry_after=self._config.queue.retry_after_seconds)
        logger.info(
            "task %s created: %s %dx%d x%d, %d steps",
            task.id,
            "img2img" if params.is_image_to_image else "txt2img",
            params.width,
            params.height,
            params.num_images,
            params.num_inference_steps,
        )
        self._wake_worker()
        return task

    async def get(self, task_id: str, request_base_url: str | None) -> TaskView:
        """The task with this id as a client sees it from `request_base_url`; raise TaskNotFound."""
        task, delivery = await self._tasks.get_with_delivery(task_id)
        base_url = public_base_url(self._config.server.public_base_url, request_base_url)
        single, several = result_urls(task, self._storage, base_url)
        return TaskView(task=task, delivery=delivery, result_url=single, result_urls=several)

    async def cancel(self, task_id: str, request_base_url: str | None) -> TaskView:
        """Cancel a task: a pending one ends now (failed, error_code cancelled, its callback sent); a processing one
        is asked to stop, which its worker does at its next denoising step. Raise TaskNotFound, or
        TaskAlreadyFinished when it has ended."""
        task = await self._tasks.get(task_id)
        if task.status is TaskStatus.PENDING:
            cancelled = tasks.cancel(task)
            delivery = delivery_for(cancelled, time.time())
            if await self._tasks.cancel_pending(task, cancelled, delivery):
                logger.info("task %s cancelled while pending", task_id)
                if delivery is not None:
                    self._wake_sender()
                return await self.get(task_id, request_base_url)
            task = await self._tasks.get(task_id)  # a worker took it meanwhile
        if task.status is TaskStatus.PROCESSING and await self._tasks.request_cancel(task_id):
            logger.info("task %s: cancel requested while processing", task_id)
            self._check_cancel()
            return await self.get(task_id, request_base_url)
        finished = await self._tasks.get(task_id)
        raise TaskAlreadyFinished(f"任务已结束（{finished.status.value}），无法取消")
