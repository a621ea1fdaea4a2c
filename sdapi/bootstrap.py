"""The composition root: builds every part of a running service from the config, starts and stops them.

create_app (api/app.py) serves HTTP around the Runtime built here; tests build it through the same function, with
their own engine, DNS resolver or fakes in place of the configured ones. Nothing is opened at import time.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from sdapi.callbacks.sender import CallbackSender
from sdapi.callbacks.ssrf import Resolver, system_resolver
from sdapi.config import Config
from sdapi.engines import Engine
from sdapi.engines.factory import build_engine
from sdapi.errors import StorageError
from sdapi.loras.library import LoraLibrary
from sdapi.service import TaskService
from sdapi.storage import ImageStorage
from sdapi.storage.local import LocalImageStorage
from sdapi.storage.minio import MinioImageStorage
from sdapi.store import Stores
from sdapi.store.sqlite import open_sqlite
from sdapi.tasks import TaskStatus
from sdapi.worker import Worker

logger = logging.getLogger(__name__)


def build_storage(config: Config) -> ImageStorage:
    if config.storage.backend == "minio":
        return MinioImageStorage(config.storage.minio)
    return LocalImageStorage(config.images_path)


@dataclass(frozen=True)
class ServiceHealth:
    """What /health reports, gathered from the parts."""

    model_loaded: bool
    engine: str
    device: str
    dtype: str
    providers: list[str]
    storage: str
    queue_pending: int
    model_error: str | None


@dataclass
class Runtime:
    """The wired parts of one running service."""

    config: Config
    stores: Stores
    storage: ImageStorage
    engine: Engine
    worker: Worker
    service: TaskService
    callbacks: CallbackSender
    library: LoraLibrary
    _started: bool = field(default=False, repr=False)

    async def start(self) -> None:
        """Check storage, scan the LoRA folder, recover interrupted tasks, start the worker and the sender."""
        try:
            self.storage.prepare()
        except StorageError as error:
            # Keep serving: tasks retry their uploads, and /health shows the storage state meanwhile.
            logger.error("image storage not ready: %s", error.message)
        # Hashing and checking every file may take a while for a big folder: off the event loop.
        await asyncio.to_thread(self.library.scan)
        known = {entry.name for entry in self.library.entries()}
        for default in self.config.loras.defaults:
            if default.name not in known:
                logger.error(
                    "loras.defaults names %r, which is not in %s: every request will be refused",
                    default.name,
                    self.library.directory,
                )
        await self.worker.recover()
        self.worker.start()
        self.callbacks.start()
        self._started = True

    async def stop(self) -> None:
        """Let the running task finish (within queue.shutdown_grace_seconds), stop sending, close the database."""
        if self._started:
            await self.worker.stop(self.config.queue.shutdown_grace_seconds)
            await self.callbacks.stop()
        await self.stores.database.close()

    async def health(self) -> ServiceHealth:
        details = self.engine.describe()
        return ServiceHealth(
            model_loaded=self.engine.loaded,
            engine=self.engine.name,
            device=details.get("device", ""),
            dtype=details.get("dtype", ""),
            providers=[name for name in details.get("providers", "").split(",") if name],
            storage=self.storage.check(),
            queue_pending=await self.stores.tasks.count(TaskStatus.PENDING),
            model_error=self.worker.model_error,
        )

    def image_path(self, key: str) -> Path | None:
        """The file behind an image key when this service serves images itself (local storage), else None."""
        return self.storage.local_path(key)


def build_runtime(
    config: Config,
    engine: Engine | None = None,
    resolver: Resolver | None = None,
    stores: Stores | None = None,
    storage: ImageStorage | None = None,
) -> Runtime:
    """Open the store and create storage, engine, worker and callback sender (nothing connects yet).

    Each argument replaces the configured part: tests pass fakes, a failing engine, or a DNS resolver of their own.
    """
    stores = stores or open_sqlite(config.database_path)
    storage = storage or build_storage(config)
    library = LoraLibrary(config.loras, config.loras_path)
    chosen_engine = engine or build_engine(config, library.path_for)
    resolver = resolver or system_resolver
    callbacks = CallbackSender(
        config.callbacks, stores.tasks, stores.outbox, storage, config.server.public_base_url, resolver
    )
    worker = Worker(
        config,
        stores.tasks,
        stores.init_images,
        chosen_engine,
        storage,
        on_delivery=callbacks.wake,
        on_model_loaded=lambda: library.set_model(chosen_engine.adapter_shapes()),
    )
    service = TaskService(
        config,
        stores.tasks,
        stores.outbox,
        storage,
        worker.wake,
        callbacks.policy,
        library,
        chosen_engine.check,
        resolver,
    )
    return Runtime(
        config=config,
        stores=stores,
        storage=storage,
        engine=chosen_engine,
        worker=worker,
        service=service,
        callbacks=callbacks,
        library=library,
    )
