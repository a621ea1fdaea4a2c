"""create_app: the one place that wires the service together. Tests call it too."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Router
from litestar.exceptions import HTTPException

from sdapi.api import routes
from sdapi.api.auth import api_key_guard
from sdapi.api.docs import assets_router, openapi_config
from sdapi.api.errors import handle_http_exception, handle_sdapi_error, handle_unexpected
from sdapi.config import Config
from sdapi.engines import Engine
from sdapi.engines.torch_engine import TorchEngine
from sdapi.errors import SdapiError
from sdapi.runtime import Runtime
from sdapi.service import TaskService
from sdapi.storage.local import LocalImageStorage
from sdapi.store.sqlite import SqliteTaskStore
from sdapi.worker import Worker

logger = logging.getLogger(__name__)


def build_runtime(config: Config, engine: Engine | None = None) -> Runtime:
    """Open the store and storage and create the engine and worker (the model loads later, in the background)."""
    store = SqliteTaskStore(config.database_path)
    storage = LocalImageStorage(config.images_path, config.server.public_base_url)
    engine = engine or TorchEngine(config.model)
    worker = Worker(config, store, engine, storage)
    service = TaskService(config, store, worker.wake)
    return Runtime(config=config, store=store, storage=storage, engine=engine, worker=worker, service=service)


def create_app(config: Config, engine: Engine | None = None) -> Litestar:
    """The Litestar app for `config`. Nothing is opened until the app starts.

    `engine` replaces the configured one (tests use it to drive failure paths through the real service).
    """

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if config.placeholder_keys():
            logger.warning(
                "api.keys holds the shipped placeholder key: fine for a local try-out, "
                "replace it (or set SDAPI_API_KEYS) before anyone else can reach this service"
            )
        runtime = build_runtime(config, engine)
        app.state.runtime = runtime
        runtime.worker.recover()
        runtime.worker.start()
        try:
            yield
        finally:
            await runtime.worker.stop(config.queue.shutdown_grace_seconds)
            runtime.store.close()

    api_v1 = Router(
        path="/api/v1",
        route_handlers=[routes.TaskController],
        guards=[api_key_guard(config.api.keys, config.api.key_header)],
    )
    route_handlers: list[object] = [routes.health, api_v1, routes.image_file]
    if (docs_assets := assets_router()) is not None:
        route_handlers.append(docs_assets)
    return Litestar(
        route_handlers=route_handlers,  # type: ignore[arg-type]
        lifespan=[lifespan],
        openapi_config=openapi_config(config.api.key_header),
        exception_handlers={
            SdapiError: handle_sdapi_error,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
        debug=False,
    )
