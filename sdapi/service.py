"""Submitting and reading tasks: what the HTTP routes call. No HTTP here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sdapi.callbacks.ssrf import CallbackPolicy, Resolver, resolve_target, system_resolver
from sdapi.config import Config
from sdapi.deliveries import Delivery
from sdapi.errors import QueueFull
from sdapi.images import decode_init_image
from sdapi.loras import LoraLibrary
from sdapi.params import GenerationParams, GenerationRequest, InitImageInfo, resolve_params
from sdapi.store import TaskStore
from sdapi.tasks import Task, TaskStatus, create

logger = logging.getLogger(__name__)


class TaskService:
    """Admits generation requests as tasks and reads tasks back."""

    def __init__(
        self,
        config: Config,
        store: TaskStore,
        wake_worker: Callable[[], None],
        callback_policy: CallbackPolicy,
        library: LoraLibrary,
        check_engine: Callable[[GenerationParams], None],
        resolver: Resolver = system_resolver,
    ) -> None:
        self._config = config
        self._library = library
        self._check_engine = check_engine
        self._store = store
        self._wake_worker = wake_worker
        self._callback_policy = callback_policy
        self._resolver = resolver

    async def submit(self, request: GenerationRequest, base_url: str | None) -> Task:
        """Validate `request`, store it as a pending task and wake the worker; raise InvalidParameter or QueueFull."""
        if self._store.count(TaskStatus.PENDING) >= self._config.queue.max_pending:
            raise QueueFull("任务队列已满，请稍后重试", retry_after=self._config.queue.retry_after_seconds)
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
        self._store.add(task, init_bytes)
        logger.info(
            "task %s created: %s %dx%d x%d, %d steps",
            task.id,
            "img2img" if init_info else "txt2img",
            params.width,
            params.height,
            params.num_images,
            params.num_inference_steps,
        )
        self._wake_worker()
        return task

    def get(self, task_id: str) -> tuple[Task, Delivery | None]:
        """The task with this id and its callback delivery; raise TaskNotFound."""
        return self._store.get(task_id), self._store.delivery_for(task_id)
