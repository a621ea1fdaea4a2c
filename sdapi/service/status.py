"""What a node says about itself and the service: its registry entry, /health, GET /api/v1/models, the add-on
libraries and the scheduler list as clients read them, and the queue gauges of the metrics. Read only: nothing here
changes a task."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import msgspec

from sdapi.addons import AddonRegistry
from sdapi.config import Config
from sdapi.core.nodes import NodeInfo, Role
from sdapi.core.results import iso
from sdapi.core.schedulers import A1111_SAMPLER_NAMES, ACCEPTED_SCHEDULERS, KARRAS_SCHEDULERS
from sdapi.core.tasks import TaskStatus
from sdapi.engines import EngineDescription, WorkerEngine
from sdapi.errors import ModelNotFound
from sdapi.observability import metrics
from sdapi.service.catalog import ModelCatalog, ModelView
from sdapi.storage import ImageStorage
from sdapi.store import Stores


class WorkerState(Protocol):
    """What this node's worker (when it runs one) tells the registry."""

    @property
    def model_error(self) -> str | None: ...

    @property
    def current_task(self) -> str | None: ...

    @property
    def models_failed(self) -> dict[str, str]: ...


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
    models_failed: dict[str, str]
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


@dataclass(frozen=True)
class SchedulerListing:
    """GET /api/v1/schedulers: every accepted scheduler with its A1111 name and Karras support, and the default."""

    schedulers: list[tuple[str, str, bool]]
    default: str | None


class StatusService:
    """The read side of one node: its own entry, and the service as seen from the store's registry."""

    def __init__(
        self,
        config: Config,
        role: Role,
        node_id: str,
        stores: Stores,
        storage: ImageStorage,
        catalog: ModelCatalog,
        addons: AddonRegistry,
        engine: WorkerEngine | None,
        worker: Callable[[], WorkerState | None],
    ) -> None:
        self._config = config
        self._role = role
        self.node_id = node_id
        self._stores = stores
        self._storage = storage
        self.catalog = catalog
        self._addons = addons
        self._engine = engine
        # The worker is built after this service (it reports to the same registry): asked for when needed.
        self._worker = worker
        self.started_at = datetime.now(UTC)

    def describe(self) -> NodeInfo:
        """This process's registry entry."""
        details = self._engine.describe() if self._engine is not None else EngineDescription()
        worker = self._worker()
        return NodeInfo(
            id=self.node_id,
            role=self._role,
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=iso(self.started_at),
            storage=self._storage.name,
            data_dir=str(self._config.data_path.resolve()),
            device=details.device,
            dtype=details.dtype,
            engine=self._engine.name if self._engine is not None else "",
            providers=details.providers,
            model=self._config.default_model.path,
            models_loaded=details.models_loaded,
            model_loaded=self._engine is not None and self._engine.loaded,
            model_error=worker.model_error if worker is not None else None,
            models_failed=worker.models_failed if worker is not None else {},
            current_task=worker.current_task if worker is not None else None,
        )

    async def health(self) -> ServiceHealth:
        """This node's view: the model counts as loaded when this process or any live worker has it loaded."""
        here = msgspec.structs.replace(self.describe(), heartbeat_at=time.time())  # alive: it is answering
        live = await self._stores.nodes.live(self._config.queue.lease_seconds)
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
            storage=self._storage.check(),
            queue_pending=await self._stores.tasks.count(TaskStatus.PENDING),
            model_error=next((node.model_error for node in workers if node.model_error), None),
            role=self._role.value,
            queue_processing=await self._stores.tasks.count(TaskStatus.PROCESSING),
            workers=[_worker_health(node) for node in workers],
        )

    async def models(self) -> list[ModelView]:
        """The configured models, the default first as configured, each marked loaded when this process or a live
        worker has it in memory."""
        live = await self._stores.nodes.live(self._config.queue.lease_seconds)
        others = {name for node in live if node.id != self.node_id for name in node.models_loaded}
        here = self.describe()  # this process's own entry is fresher than its beat
        loaded = set(here.models_loaded) | others
        failures: dict[str, dict[str, str]] = {}
        for node in [here, *(node for node in live if node.id != here.id)]:
            for name, message in node.models_failed.items():
                failures.setdefault(name, {})[node.id] = message
        # Hashing a model's weights the first time reads them: off the event loop.
        return await asyncio.to_thread(self.catalog.views, loaded, failures)

    def model_sha256(self, name: str) -> str | None:
        """The sha256 of model `name`'s weights (None for a hub id); the first call reads them: off the event loop."""
        return self.catalog.sha256(name)

    def listed(self, kind: str) -> list[Any]:
        """The library of add-on kind `kind` (its URL segment: loras, ip-adapters...) as last scanned."""
        return self._addons.named(kind).listed()

    async def rescan(self, kind: str) -> list[Any]:
        """Scan add-on kind `kind`'s folder again (reads and hashes new files: off the event loop)."""
        library = self._addons.named(kind)
        await asyncio.to_thread(library.scan)
        return library.listed()

    def schedulers(self, model: str | None = None) -> SchedulerListing:
        """Every scheduler a request may name, or those model `model` runs (its family's: a flow-matching model takes
        flow-match Euler and the solvers diffusers runs on flow sigmas); raise ModelNotFound (404) for a model
        not served."""
        if model is not None and model not in self.catalog.names:
            raise ModelNotFound(f"模型不存在：{model!r}。可用模型：{', '.join(self.catalog.names)}")
        names = ACCEPTED_SCHEDULERS if model is None else self.catalog.resolve(model)[1].family.schedulers
        return SchedulerListing(
            schedulers=[(name, A1111_SAMPLER_NAMES[name], name in KARRAS_SCHEDULERS) for name in names],
            default=self._config.defaults.scheduler,
        )

    async def refresh_gauges(self) -> None:
        """Set the metrics that describe the whole service from the store: queue depth and live workers."""
        for status in (TaskStatus.PENDING, TaskStatus.PROCESSING):
            metrics.QUEUE_TASKS.labels(status=status.value).set(await self._stores.tasks.count(status))
        live = await self._stores.nodes.live(self._config.queue.lease_seconds)
        metrics.WORKERS_ALIVE.set(sum(1 for node in live if node.role.runs_worker))

    def image_path(self, key: str) -> Path | None:
        """The file behind an image key when this service serves images itself (local storage), else None."""
        return self._storage.local_path(key)


def _worker_health(node: NodeInfo) -> WorkerHealth:
    return WorkerHealth(
        id=node.id,
        host=node.host,
        device=node.device,
        engine=node.engine,
        model=node.model,
        model_loaded=node.model_loaded,
        model_error=node.model_error,
        models_failed=dict(node.models_failed),
        current_task=node.current_task,
        started_at=node.started_at,
        last_heartbeat_at=iso(datetime.fromtimestamp(node.heartbeat_at, UTC)) if node.heartbeat_at else node.started_at,
    )
