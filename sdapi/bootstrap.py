"""The composition root: builds every part of a running process from the config and its role, starts and stops
them.

Roles (sdapi.nodes.Role): `all` (API and worker in one process, the default), `api` (HTTP only: no engine, no
model, torch never imported) and `worker` (engine and task loop, no HTTP). Every role runs the reaper and a
heartbeat; roles that serve HTTP also send callbacks.

create_app (api/app.py) serves HTTP around the Runtime built here; `sdapi worker` runs one without HTTP. Tests build
it through the same function, with their own engine, DNS resolver or fakes in place of the configured ones.
Nothing is opened at import time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from sdapi import metrics
from sdapi.callbacks.sender import CallbackSender
from sdapi.callbacks.ssrf import CallbackPolicy, Resolver, system_resolver
from sdapi.catalog import ModelCatalog, ModelView
from sdapi.config import Config
from sdapi.engines import Engine
from sdapi.errors import ConfigError, StorageError
from sdapi.estimates import StartEstimator
from sdapi.heartbeat import Heartbeat
from sdapi.loras.library import LoraLibrary
from sdapi.metrics_publisher import MetricsPublisher
from sdapi.nodes import NodeInfo, Role
from sdapi.params import GenerationParams
from sdapi.reaper import Reaper
from sdapi.results import iso
from sdapi.retention import RetentionSweeper
from sdapi.service import TaskService
from sdapi.storage import ImageStorage
from sdapi.storage.local import LocalImageStorage
from sdapi.storage.minio import MinioImageStorage
from sdapi.store import Stores
from sdapi.tasks import TaskStatus
from sdapi.watch import TaskWatch
from sdapi.worker import Worker

logger = logging.getLogger(__name__)


def build_storage(config: Config) -> ImageStorage:
    if config.storage.backend == "minio":
        return MinioImageStorage(config.storage.minio)
    return LocalImageStorage(config.images_path)


def open_stores(config: Config) -> Stores:
    """The configured task database (not yet connected: `stores.database.open()` does that and migrates)."""
    if config.store.backend == "postgres":
        from sdapi.store.postgres import open_postgres

        assert config.store.postgres.dsn is not None  # checked when the config was loaded
        return open_postgres(config.store.postgres.dsn, config.store.postgres.pool_size)
    from sdapi.store.sqlite import open_sqlite

    return open_sqlite(config.database_path)


def _build_engine(config: Config, library: LoraLibrary) -> Engine:
    # Imported here: the engines import torch, which an API node never needs.
    from sdapi.engines.factory import build_engine

    return build_engine(config, library.path_for)


@dataclass(frozen=True)
class WorkerHealth:
    """One live worker as /health lists it."""

    id: str
    host: str
    device: str
    engine: str
    model: str
    model_loaded: bool
    model_error: str | None
    current_task: str | None
    started_at: str
    last_heartbeat_at: str


@dataclass(frozen=True)
class ServiceHealth:
    """What /health reports, gathered from the parts and from the live workers in the registry."""

    model_loaded: bool
    engine: str
    device: str
    dtype: str
    providers: list[str]
    storage: str
    queue_pending: int
    model_error: str | None
    role: str
    queue_processing: int
    workers: list[WorkerHealth]


@dataclass
class Runtime:
    """The wired parts of one running process."""

    config: Config
    role: Role
    node_id: str
    stores: Stores
    storage: ImageStorage
    engine: Engine | None
    worker: Worker | None
    service: TaskService
    callbacks: CallbackSender | None
    reaper: Reaper
    retention: RetentionSweeper | None
    heartbeat: Heartbeat
    library: LoraLibrary
    catalog: ModelCatalog
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    _started: bool = field(default=False, repr=False)
    _metrics: MetricsPublisher | None = field(default=None, repr=False)

    async def start(self) -> None:
        """Open the database, check storage, scan the LoRA folder, then start the loops this role runs."""
        await self.stores.database.open()
        try:
            self.storage.prepare()
        except StorageError as error:
            # Keep serving: tasks retry their uploads, and /health shows the storage state meanwhile.
            logger.error("image storage not ready: %s", error.message)
        if self.role is Role.API:
            await self._check_shared_storage()
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
        self.heartbeat.start(self.describe)
        self.reaper.start()
        if self.retention is not None:
            self.retention.start()
        await self.stores.feed.start(
            on_task=self._task_announced, on_delivery=self._delivery_announced, on_cancel=self._cancel_announced
        )
        if self.worker is not None:
            self.worker.start()
        if self.callbacks is not None:
            self.callbacks.start()
        if self.config.metrics.enabled and self.config.metrics.port is not None:
            self._metrics = MetricsPublisher(self.config.server.host, self.config.metrics.port, self.refresh_gauges)
            self._metrics.start()
        self._started = True

    async def refresh_gauges(self) -> None:
        """Set the metrics that describe the whole service from the store: queue depth and live workers."""
        for status in (TaskStatus.PENDING, TaskStatus.PROCESSING):
            metrics.QUEUE_TASKS.labels(status=status.value).set(await self.stores.tasks.count(status))
        live = await self.stores.nodes.live(self.config.queue.lease_seconds)
        metrics.WORKERS_ALIVE.set(sum(1 for node in live if node.role.runs_worker))

    def _task_announced(self) -> None:
        if self.worker is not None:
            self.worker.wake()

    def _cancel_announced(self) -> None:
        if self.worker is not None:
            self.worker.check_cancel()

    def _delivery_announced(self) -> None:
        if self.callbacks is not None:
            self.callbacks.wake()

    async def _check_shared_storage(self) -> None:
        """An API node with local storage serves images from its own data_dir: refuse to start when a live worker
        writes them somewhere else (another host, or another folder), where this node could never serve them."""
        if self.storage.name != "local":
            return
        here = self.describe()
        for node in await self.stores.nodes.live(self.config.queue.lease_seconds):
            if node.role.runs_worker and (node.host != here.host or node.data_dir != here.data_dir):
                raise ConfigError(
                    f"storage.backend local: worker {node.id} on {node.host} keeps its images in {node.data_dir}, "
                    f"this API node serves {here.data_dir} on {here.host}. With separate API and worker processes "
                    "use MinIO (storage.backend: minio), or let every node share one data_dir"
                )

    async def stop(self) -> None:
        """Let the running task finish (within queue.shutdown_grace_seconds), stop the loops, close the database."""
        if self._started:
            if self.worker is not None:
                await self.worker.stop(self.config.queue.shutdown_grace_seconds)
            if self.callbacks is not None:
                await self.callbacks.stop()
            await self.stores.feed.stop()
            await self.service.stop()
            await self.reaper.stop()
            if self.retention is not None:
                await self.retention.stop()
            await self.heartbeat.stop()
            if self._metrics is not None:
                await self._metrics.stop()
        await self.stores.database.close()

    def describe(self) -> NodeInfo:
        """This process's registry entry."""
        details = self.engine.describe() if self.engine is not None else {}
        return NodeInfo(
            id=self.node_id,
            role=self.role,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=iso(self.started_at),
            storage=self.storage.name,
            data_dir=str(self.config.data_path.resolve()),
            device=details.get("device", ""),
            dtype=details.get("dtype", ""),
            engine=self.engine.name if self.engine is not None else "",
            providers=tuple(name for name in details.get("providers", "").split(",") if name),
            model=self.config.default_model.path,
            models_loaded=tuple(name for name in details.get("models_loaded", "").split(",") if name),
            model_loaded=self.engine is not None and self.engine.loaded,
            model_error=self.worker.model_error if self.worker is not None else None,
            current_task=self.worker.current_task if self.worker is not None else None,
        )

    async def health(self) -> ServiceHealth:
        """This node's view: the model counts as loaded when this process or any live worker has it loaded."""
        here = msgspec.structs.replace(self.describe(), heartbeat_at=time.time())  # alive: it is answering
        live = await self.stores.nodes.live(self.config.queue.lease_seconds)
        workers = [node for node in live if node.role.runs_worker and node.id != here.id]
        if here.role.runs_worker:
            workers.insert(0, here)
        # Engine details from this process when it runs one, else from the first worker with its model loaded.
        source = next((node for node in workers if node.model_loaded), workers[0] if workers else here)
        return ServiceHealth(
            model_loaded=any(node.model_loaded for node in workers),
            engine=source.engine,
            device=source.device,
            dtype=source.dtype,
            providers=list(source.providers),
            storage=self.storage.check(),
            queue_pending=await self.stores.tasks.count(TaskStatus.PENDING),
            model_error=next((node.model_error for node in workers if node.model_error), None),
            role=self.role.value,
            queue_processing=await self.stores.tasks.count(TaskStatus.PROCESSING),
            workers=[_worker_health(node) for node in workers],
        )

    async def models(self) -> list[ModelView]:
        """The configured models, each marked loaded when this process or a live worker has it in memory."""
        live = await self.stores.nodes.live(self.config.queue.lease_seconds)
        others = {name for node in live if node.id != self.node_id for name in node.models_loaded}
        loaded = set(self.describe().models_loaded) | others  # this process's own entry is fresher than its beat
        # Hashing a model's weights the first time reads them: off the event loop.
        return await asyncio.to_thread(self.catalog.views, loaded)

    def image_path(self, key: str) -> Path | None:
        """The file behind an image key when this service serves images itself (local storage), else None."""
        return self.storage.local_path(key)


def _worker_health(node: NodeInfo) -> WorkerHealth:
    return WorkerHealth(
        id=node.id,
        host=node.host,
        device=node.device,
        engine=node.engine,
        model=node.model,
        model_loaded=node.model_loaded,
        model_error=node.model_error,
        current_task=node.current_task,
        started_at=node.started_at,
        last_heartbeat_at=iso(datetime.fromtimestamp(node.heartbeat_at, UTC)) if node.heartbeat_at else node.started_at,
    )


def _no_engine_check(params: GenerationParams) -> None:
    """An API node has no engine to ask: what only the engine can refuse fails the task on the worker instead."""


def build_runtime(
    config: Config,
    engine: Engine | None = None,
    resolver: Resolver | None = None,
    stores: Stores | None = None,
    storage: ImageStorage | None = None,
    role: Role = Role.ALL,
) -> Runtime:
    """Create the parts `role` runs: store, storage, engine, worker, callback sender, reaper, heartbeat (nothing
    connects until start()).

    Each argument replaces the configured part: tests pass fakes, a failing engine, or a DNS resolver of their own.
    """
    catalog = ModelCatalog(config)  # refuses a model of a kind not served before anything starts
    stores = stores or open_stores(config)
    storage = storage or build_storage(config)
    library = LoraLibrary(config.loras, config.loras_path)
    node_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    chosen_engine = (engine or _build_engine(config, library)) if role.runs_worker else None
    resolver = resolver or system_resolver
    callbacks = (
        CallbackSender(config.callbacks, stores.tasks, stores.outbox, storage, config.server.public_base_url, resolver)
        if role.serves_http
        else None
    )
    wake_sender: Callable[[], None] = callbacks.wake if callbacks is not None else lambda: None
    heartbeat = Heartbeat(stores.nodes, config.queue.lease_seconds)
    watch = TaskWatch(stores.tasks)
    worker = None
    if chosen_engine is not None:
        engine_for_library = chosen_engine

        def model_loaded() -> None:
            library.set_model(engine_for_library.adapter_shapes())
            heartbeat.beat_now()

        worker = Worker(
            config,
            stores.tasks,
            stores.init_images,
            stores.throughput,
            chosen_engine,
            storage,
            worker_id=node_id,
            on_delivery=wake_sender,
            on_model_loaded=model_loaded,
            on_change=watch.changed,
            model_sha256=catalog.sha256,
        )
    wake_worker: Callable[[], None] = worker.wake if worker is not None else lambda: None
    reaper = Reaper(
        stores.tasks,
        config.queue.max_attempts,
        config.queue.lease_seconds,
        on_requeue=wake_worker,
        on_delivery=wake_sender,
    )
    days = config.retention.days
    service = TaskService(
        config,
        stores.tasks,
        stores.init_images,
        stores.outbox,
        storage,
        wake_worker,
        wake_sender,
        worker.check_cancel if worker is not None else lambda: None,
        CallbackPolicy.from_config(config.callbacks),
        library,
        chosen_engine.check if chosen_engine is not None else _no_engine_check,
        StartEstimator(stores.throughput, stores.nodes, config.queue.lease_seconds),
        watch,
        catalog,
        resolver,
    )
    return Runtime(
        config=config,
        role=role,
        node_id=node_id,
        stores=stores,
        storage=storage,
        engine=chosen_engine,
        worker=worker,
        service=service,
        callbacks=callbacks,
        reaper=reaper,
        retention=None if days is None else RetentionSweeper(stores.tasks, storage, days),
        heartbeat=heartbeat,
        library=library,
        catalog=catalog,
    )
