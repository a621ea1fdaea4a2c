"""create_app: the one place that wires the service together. Tests call it too."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from litestar import Litestar, Router
from litestar.exceptions import HTTPException

from sdapi.api import routes
from sdapi.api.auth import api_key_guard
from sdapi.api.docs import assets_router, openapi_config
from sdapi.api.errors import handle_http_exception, handle_sdapi_error, handle_unexpected
from sdapi.callbacks.sender import CallbackSender
from sdapi.callbacks.ssrf import Resolver, system_resolver
from sdapi.config import Config
from sdapi.engines import Engine
from sdapi.engines.devices import choose_device, choose_dtype
from sdapi.engines.onnx_engine import OnnxEngine
from sdapi.engines.router import EngineRouter
from sdapi.engines.torch_engine import TorchEngine
from sdapi.errors import SdapiError, StorageError
from sdapi.loras import LoraLibrary
from sdapi.runtime import Runtime
from sdapi.service import TaskService
from sdapi.storage import ImageStorage
from sdapi.storage.local import LocalImageStorage
from sdapi.storage.minio import MinioImageStorage
from sdapi.store.sqlite import SqliteTaskStore
from sdapi.worker import Worker

logger = logging.getLogger(__name__)


def build_storage(config: Config) -> ImageStorage:
    if config.storage.backend == "minio":
        return MinioImageStorage(config.storage.minio)
    return LocalImageStorage(config.images_path, config.server.public_base_url)


def build_engine(config: Config, library: LoraLibrary) -> Engine:
    """torch alone, or the ONNX export with torch behind it, as model.engine and model.onnx_path say."""

    def make_torch() -> TorchEngine:
        return TorchEngine(config.model, library.path_for, config.loras.cache_size)

    if config.model.engine == "torch" or config.model.onnx_path is None:
        return make_torch()
    device = choose_device(config.model.device)
    # Measured (docs/benchmarks.md): on a CPU with AMX the torch engine in bf16 beats ONNX Runtime's fp32 UNet about
    # 3x; everywhere else ONNX Runtime was the faster path (e.g. 7.9 s vs 9.2 s per SD 1.5 step for torch fp32).
    prefer_onnx = not (device == "cpu" and choose_dtype(config.model.dtype, device) == torch.bfloat16)
    return EngineRouter(
        OnnxEngine(config.model, config.onnx, config.tensorrt_cache_path),
        make_torch,
        only_onnx=config.model.engine == "onnx",
        prefer_onnx=prefer_onnx,
        fallback_to_torch=config.onnx.fallback_to_torch,
    )


def build_runtime(config: Config, engine: Engine | None = None, resolver: Resolver | None = None) -> Runtime:
    """Open the store and create storage, engine, worker and callback sender (nothing connects yet)."""
    store = SqliteTaskStore(config.database_path)
    storage = build_storage(config)
    library = LoraLibrary(config.loras, config.loras_path)
    engine = engine or build_engine(config, library)
    resolver = resolver or system_resolver
    callbacks = CallbackSender(config.callbacks, store, storage, config.server.public_base_url, resolver)
    worker = Worker(
        config,
        store,
        engine,
        storage,
        on_delivery=callbacks.wake,
        on_model_loaded=lambda: library.set_model(engine.adapter_shapes()),
    )
    service = TaskService(config, store, worker.wake, callbacks.policy, library, engine.check, resolver)
    return Runtime(
        config=config,
        store=store,
        storage=storage,
        engine=engine,
        worker=worker,
        service=service,
        callbacks=callbacks,
        library=library,
    )


def create_app(config: Config, engine: Engine | None = None, resolver: Resolver | None = None) -> Litestar:
    """The Litestar app for `config`. Nothing is opened until the app starts.

    `engine` and `resolver` replace the configured engine and the system DNS resolver (tests use them to drive
    failure paths and SSRF checks through the real service).
    """

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if config.placeholder_keys():
            logger.warning(
                "api.keys holds the shipped placeholder key: fine for a local try-out, "
                "replace it (or set SDAPI_API_KEYS) before anyone else can reach this service"
            )
        runtime = build_runtime(config, engine, resolver)
        app.state.runtime = runtime
        try:
            runtime.storage.prepare()
        except StorageError as error:
            # Keep serving: tasks retry their uploads, and /health shows the storage state meanwhile.
            logger.error("image storage not ready: %s", error.message)
        # Hashing and checking every file may take a while for a big folder: off the event loop.
        await asyncio.to_thread(runtime.library.scan)
        known = {entry.name for entry in runtime.library.entries()}
        for default in config.loras.defaults:
            if default.name not in known:
                logger.error(
                    "loras.defaults names %r, which is not in %s: every request will be refused",
                    default.name,
                    runtime.library.directory,
                )
        runtime.worker.recover()
        runtime.worker.start()
        runtime.callbacks.start()
        try:
            yield
        finally:
            await runtime.worker.stop(config.queue.shutdown_grace_seconds)
            await runtime.callbacks.stop()
            runtime.store.close()

    api_v1 = Router(
        path="/api/v1",
        route_handlers=[routes.TaskController, routes.LoraController],
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
