"""The registry entry of one running sdapi process (an API node, a worker, or both). Pure: no I/O.

Every process writes its entry on a heartbeat; GET /health on any node lists the live workers from these entries.
"""

from __future__ import annotations

import enum

import msgspec


class Role(enum.StrEnum):
    ALL = "all"  # `sdapi serve` (default): the API and a worker in one process
    API = "api"  # `sdapi serve --role api`: HTTP only, never loads a model
    WORKER = "worker"  # `sdapi worker`: loads the model and takes tasks, no public HTTP

    @property
    def runs_worker(self) -> bool:
        return self is not Role.API

    @property
    def serves_http(self) -> bool:
        return self is not Role.WORKER


class NodeInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a process says about itself on every heartbeat."""

    id: str
    role: Role
    host: str
    pid: int
    started_at: str  # ISO 8601, UTC
    # Where its images go: "local" storage only works across nodes that share data_dir (same host, same folder).
    storage: str
    data_dir: str
    # The worker's side; empty for an API node.
    device: str = ""
    dtype: str = ""
    engine: str = ""
    providers: tuple[str, ...] = ()
    model: str = ""
    model_loaded: bool = False
    # The models (config names) this worker has in memory.
    models_loaded: tuple[str, ...] = ()
    model_error: str | None = None
    # Models this worker could not load (name -> why); it leaves their tasks to workers that can, and tries again
    # with backoff.
    models_failed: dict[str, str] = {}
    current_task: str | None = None
    # Unix time of the last heartbeat, by the database clock; set by the registry when read.
    heartbeat_at: float = 0.0
