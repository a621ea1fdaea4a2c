"""The one pipeline that checks a generation request before it becomes a task, in one named order; each step is
owned by one module and raises InvalidParameter (a 400) naming the field:

1. schema: the msgspec Struct the route or dialect decoded (sdapi.core.request), before this runs;
2. limits: the init image's size and pixels, from its header before decoding (sdapi.media.images);
3. model: the requested model exists and is served (sdapi.service.catalog);
4. LoRAs: each exists, is of the model's family and fits it (sdapi.loras.library);
5. scheduler and its options, sizes, seeds, defaults (sdapi.core.params);
6. engine capability: what the engine can serve, e.g. an ONNX-only export's sizes and LoRA set (sdapi.engines);
7. callback target: the URL resolves to an address callbacks may reach (sdapi.callbacks.ssrf).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from sdapi.callbacks.ssrf import CallbackPolicy, Resolver, resolve_target
from sdapi.config import Config
from sdapi.core.params import GenerationParams, InitImageInfo, resolve_params
from sdapi.core.request import GenerationRequest
from sdapi.loras.library import LoraLibrary
from sdapi.media.images import decode_init_image
from sdapi.service.catalog import ModelCatalog


class EngineCapability(Protocol):
    """Step 6: what an engine can serve; raise InvalidParameter for what it cannot."""

    def check(self, params: GenerationParams) -> None: ...


@dataclass(frozen=True)
class Admitted:
    """A request that passed every check: what the engine will run, and the init image's bytes to keep beside it."""

    params: GenerationParams
    init_image: bytes | None


class RequestChecks:
    """Runs the steps above for one request. `engine` is the worker's engine in a process that runs one; an API node
    (serve --role api) has none, and a request only an engine can refuse fails on the worker as invalid_input."""

    def __init__(
        self,
        config: Config,
        catalog: ModelCatalog,
        library: LoraLibrary,
        engine: EngineCapability | None,
        resolver: Resolver,
    ) -> None:
        self._config = config
        self._catalog = catalog
        self._library = library
        self._engine = engine
        self._resolver = resolver
        self._callback_policy = CallbackPolicy.from_config(config.callbacks)

    async def check(self, request: GenerationRequest) -> Admitted:
        init_bytes: bytes | None = None
        init_info: InitImageInfo | None = None
        if request.init_image is not None:
            # Decoding a large image takes a while: off the event loop, so other requests are not held up.
            init_bytes, init_info = await asyncio.to_thread(
                decode_init_image, request.init_image, self._config.limits.max_init_image_pixels
            )
        model, family = self._catalog.resolve(request.model)
        # The LoRA fits were decided against the default model (the one a worker loads first).
        loras = self._library.resolve(request.loras or [], family, fits_checked=model == self._catalog.default)
        params = resolve_params(
            request,
            self._config.defaults,
            self._config.limits,
            init_info,
            loras=loras,
            model=model,
            native_size=family.native_size,
        )
        if self._engine is not None:
            self._engine.check(params)
        if params.callback_url is not None:
            # Refused here, with a 400, rather than silently dropped when the task ends.
            await resolve_target(
                params.callback_url, self._callback_policy, self._resolver, self._config.callbacks.resolve_timeout
            )
        return Admitted(params, init_bytes)
