"""create_app: the HTTP service around the Runtime that sdapi.bootstrap builds. Tests call it too. The routes reach
the task service, the status service and the extras (app.state.service, .status, .extras), and the config handed
to them."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.middleware import DefineMiddleware

from sdapi.api import routes
from sdapi.api.allow import complete_allow
from sdapi.api.auth import api_key_guard
from sdapi.api.body_limit import body_limit_middleware
from sdapi.api.dialects.a1111 import a1111_router, controlnet_router
from sdapi.api.dialects.openai import openai_router
from sdapi.api.docs import StrictStructSchemaPlugin, assets_router, openapi_config
from sdapi.api.errors import handle_http_exception, handle_sdapi_error, handle_unexpected
from sdapi.api.playground import favicon
from sdapi.api.request_ids import echo_request_id, request_id_middleware
from sdapi.api.validation import refuse_deep_json
from sdapi.bootstrap import build_runtime
from sdapi.callbacks.ssrf import Resolver
from sdapi.config import Config
from sdapi.core.callers import callers_by_key
from sdapi.core.nodes import Role
from sdapi.errors import SdapiError
from sdapi.storage import ImageStorage
from sdapi.store import Stores

if TYPE_CHECKING:  # the HTTP layer passes an engine through to the composition root; it never runs one
    from sdapi.engines import Engine

logger = logging.getLogger(__name__)


def create_app(
    config: Config,
    engine: Engine | None = None,
    resolver: Resolver | None = None,
    stores: Stores | None = None,
    storage: ImageStorage | None = None,
    role: Role = Role.ALL,
) -> Litestar:
    """The Litestar app for `config`, in role `all` (with a worker) or `api` (HTTP only). Nothing is opened until
    the app starts.

    `engine`, `resolver`, `stores` and `storage` replace the configured parts (tests use them to drive failure
    paths and SSRF checks through the real service).
    """

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if config.placeholder_keys():
            logger.warning(
                "api.keys holds the shipped placeholder key: fine for a local try-out, "
                "replace it (or set SDAPI_API_KEYS) before anyone else can reach this service"
            )
        runtime = build_runtime(config, engine, resolver, stores, storage, role=role)
        app.state.runtime = runtime  # for tests that look inside; the routes reach only these three:
        app.state.service = runtime.service
        app.state.status = runtime.status
        app.state.extras = runtime.extras
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    api_v1 = Router(
        path="/api/v1",
        route_handlers=[
            routes.TaskController,
            *routes.ADDON_CONTROLLERS,
            routes.ControlNetPreviewController,
            routes.schedulers,
            routes.models,
        ],
        guards=[api_key_guard(callers_by_key(config.api), config.api.key_header)],
    )
    route_handlers: list[object] = [
        routes.health,
        api_v1,
        routes.image_file,
        favicon,
        openai_router(config),
        a1111_router(config),
        controlnet_router(config),
    ]
    if config.metrics.enabled and config.metrics.port is None:
        route_handlers.append(routes.metrics_text)
    if (docs_assets := assets_router()) is not None:
        route_handlers.append(docs_assets)
    limit = config.limits.request_limit_bytes
    return Litestar(
        route_handlers=route_handlers,  # type: ignore[arg-type]
        lifespan=[lifespan],
        openapi_config=openapi_config(config.api.key_header),
        plugins=[StrictStructSchemaPlugin()],
        middleware=[request_id_middleware, DefineMiddleware(body_limit_middleware(limit))],
        before_send=[echo_request_id, complete_allow],
        # Routes with a hook of their own (the native API's strict_body) run the same depth check themselves.
        before_request=refuse_deep_json,
        # The middleware answers first; Litestar's own limit stays as a backstop at the same size.
        request_max_body_size=limit,
        exception_handlers={
            SdapiError: handle_sdapi_error,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
        state=State({"config": config}),
        debug=False,
        # Logging is set up once by the CLI (sdapi.observability.logs): Litestar must not replace the root handlers.
        logging_config=None,
    )
