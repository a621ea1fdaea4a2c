"""The composition root: builds every part of a running process from the config and its role, starts and stops
them.

Roles (sdapi.core.nodes.Role): `all` (API and worker in one process, the default), `api` (HTTP only: no engine, no
model; torch is imported only if a client asks it for a neural upscaler or a depth map, which the API node runs
itself: service/extras.py) and `worker` (engine and task loop, no HTTP). Every role runs the reaper and a
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
import uuid
from dataclasses import dataclass, field

from sdapi.addons import AddonRegistry
from sdapi.background.heartbeat import Heartbeat
from sdapi.background.metrics_publisher import MetricsPublisher
from sdapi.background.reaper import Reaper
from sdapi.background.retention import RetentionSweeper
from sdapi.background.wakeup import Signals
from sdapi.callbacks.sender import CallbackSender
from sdapi.callbacks.ssrf import Resolver, system_resolver
from sdapi.config import Config
from sdapi.core.nodes import Role
from sdapi.embeddings.library import EmbeddingLibrary
from sdapi.engines import Engine, WorkerEngine
from sdapi.errors import ConfigError, StorageError
from sdapi.loras.library import LoraLibrary
from sdapi.previews.board import PreviewBoard
from sdapi.service.admission import RequestChecks
from sdapi.service.catalog import ModelCatalog
from sdapi.service.estimates import StartEstimator
from sdapi.service.extras import Extras
from sdapi.service.status import ServiceHealth, StatusService
from sdapi.service.tasks import TaskService
from sdapi.service.watch import TaskWatch
from sdapi.storage import ImageStorage
from sdapi.storage.local import LocalImageStorage
from sdapi.storage.minio import MinioImageStorage
from sdapi.store import Stores
from sdapi.upscalers.library import UpscalerLibrary
from sdapi.worker.loop import Worker
from sdapi.worker.outputs import Outputs

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


def _worker_engine(config: Config, addons: AddonRegistry, given: Engine | None) -> WorkerEngine:
    """The configured pool of models, or the engine a test or tool passed, serving the default model alone."""
    # Imported here: the engines import torch, which an API node never needs.
    if given is not None:
        from sdapi.engines.single import SingleModelEngine

        return SingleModelEngine(given, config.default_model.name)
    from sdapi.engines.factory import build_engine

    return build_engine(config, addons)


@dataclass
class Runtime:
    """The wired parts of one running process. The HTTP layer reaches only `service`, `status` and `extras`."""

    config: Config
    role: Role
    stores: Stores
    storage: ImageStorage
    signals: Signals
    # The engine as built (the configured pool) or as given (tests); the worker runs it as a WorkerEngine.
    engine: Engine | None
    worker: Worker | None
    service: TaskService
    status: StatusService
    callbacks: CallbackSender | None
    reaper: Reaper
    retention: RetentionSweeper | None
    heartbeat: Heartbeat
    addons: AddonRegistry
    extras: Extras
    _started: bool = field(default=False, repr=False)
    _metrics: MetricsPublisher | None = field(default=None, repr=False)

    @property
    def node_id(self) -> str:
        return self.status.node_id

    async def health(self) -> ServiceHealth:
        return await self.status.health()

    async def start(self) -> None:
        """Open the database, check storage, scan every add-on kind's folder, then start the loops this role
        runs."""
        await self.stores.database.open()
        try:
            self.storage.prepare()
        except StorageError as error:
            # Keep serving: tasks retry their uploads, and /health shows the storage state meanwhile.
            logger.error("image storage not ready: %s", error.message)
        if self.role is Role.API:
            await self._check_shared_storage()
        # Hashing and checking every file may take a while for a big folder: off the event loop. Each model's
        # LoRA targets come from its files first (headers only), so every role decides fits alike.
        await asyncio.to_thread(self._learn_lora_targets)
        for library in self.addons:
            await asyncio.to_thread(library.scan)
        loras = self.addons.of(LoraLibrary)
        known = {entry.name for entry in loras.entries()}
        for default in self.config.loras.defaults:
            if default.name not in known:
                logger.error(
                    "loras.defaults names %r, which is not in %s: every request will be refused",
                    default.name,
                    loras.directory,
                )
        self.heartbeat.start(self.status.describe)
        self.reaper.start()
        if self.retention is not None:
            self.retention.start()
        signals = self.signals
        await self.stores.feed.start(
            on_task=signals.task_added, on_delivery=signals.delivery_due, on_cancel=signals.cancel_requested
        )
        if self.worker is not None:
            self.worker.start()
        if self.callbacks is not None:
            self.callbacks.start()
        if self.config.metrics.enabled and self.config.metrics.port is not None:
            self._metrics = MetricsPublisher(
                self.config.server.host, self.config.metrics.port, self.status.refresh_gauges
            )
            self._metrics.start()
        self._started = True

    def _learn_lora_targets(self) -> None:
        catalog = self.status.catalog
        for name in catalog.names:
            targets = catalog.lora_targets(name)
            if targets is not None:
                self.addons.of(LoraLibrary).set_model(targets, None if name == catalog.default else name)

    async def _check_shared_storage(self) -> None:
        """An API node with local storage serves images from its own data_dir: refuse to start when a live worker
        writes them somewhere else (another host, or another folder), where this node could never serve them."""
        if self.storage.name != "local":
            return
        here = self.status.describe()
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
    resolver = resolver or system_resolver
    addons = AddonRegistry.from_config(config)
    # Embedding files are listed as fitting the default model or not: its text widths come from its files.
    addons.of(EmbeddingLibrary).default_widths = catalog.text_widths(catalog.default)
    library = addons.of(LoraLibrary)
    signals = Signals()
    node_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    worker_engine = _worker_engine(config, addons, engine) if role.runs_worker else None
    worker: Worker | None = None
    status = StatusService(
        config,
        role,
        node_id,
        stores,
        storage,
        catalog,
        addons,
        worker_engine,
        lambda: worker,
    )
    heartbeat = Heartbeat(stores.nodes, config.queue.lease_seconds)
    watch = TaskWatch(stores.tasks)
    # Previews stay in this process's memory unless readers may be elsewhere (sdapi.previews.board).
    shares_previews = role is not Role.ALL or config.store.backend == "postgres"
    previews = PreviewBoard(config.previews, stores.previews if shares_previews else None)
    signals.on_task_changed(watch.changed)
    if worker_engine is not None:
        loaded_engine = worker_engine
        signals.on_model_loaded(lambda: library.set_model(loaded_engine.adapter_shapes()))
        signals.on_model_loaded(heartbeat.beat_now)
        worker = Worker(
            config, stores, worker_engine, Outputs(config, storage, catalog.sha256), signals, node_id, previews
        )
        signals.on_task_added(worker.wake)
        signals.on_cancel_requested(worker.report_cancel_now)
    callbacks = None
    if role.serves_http:
        callbacks = CallbackSender(
            config.callbacks, stores.tasks, stores.outbox, storage, config.server.public_base_url, resolver
        )
        signals.on_delivery_due(callbacks.wake)
    checks = RequestChecks(config, catalog, addons, resolver)
    estimator = StartEstimator(stores.throughput, stores.nodes, config.queue.lease_seconds)
    days = config.retention.days
    return Runtime(
        config=config,
        role=role,
        stores=stores,
        storage=storage,
        signals=signals,
        engine=(engine or worker_engine) if role.runs_worker else None,
        worker=worker,
        service=TaskService(config, stores, storage, checks, estimator, watch, signals, previews),
        status=status,
        callbacks=callbacks,
        reaper=Reaper(stores.tasks, config.queue.max_attempts, config.queue.lease_seconds, signals, storage),
        retention=None if days is None else RetentionSweeper(stores.tasks, storage, days),
        heartbeat=heartbeat,
        addons=addons,
        extras=Extras(config, addons.of(UpscalerLibrary)),
    )
