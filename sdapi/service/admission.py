"""The one pipeline that checks a generation request before it becomes a task, in one named order; each step is
owned by one module and raises InvalidParameter (a 400) naming the field:

1. schema: the msgspec Struct the route or dialect decoded (sdapi.core.request), before this runs;
2. limits: the init image's size and pixels, from its header before decoding (sdapi.media.images);
3. model: the requested model exists and is served (sdapi.service.catalog);
4. LoRAs: each exists, is of the model's family and fits it (sdapi.loras.library); the embeddings the prompts
   name fit the model's text encoders (sdapi.embeddings.library);
5. scheduler and its options, sizes, seeds, defaults (sdapi.core.params);
6. engine capability: what the model's engine can serve, from its files (an ONNX-only export's sizes and LoRA set,
   its own scheduler in step 5): sdapi.service.catalog;
7. callback target: the URL resolves to an address callbacks may reach (sdapi.callbacks.ssrf).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sdapi.callbacks.ssrf import CallbackPolicy, Resolver, resolve_target
from sdapi.config import Config
from sdapi.core.params import GenerationParams, InitImageInfo, resolve_params
from sdapi.core.request import GenerationRequest
from sdapi.embeddings.library import EmbeddingLibrary
from sdapi.loras.library import LoraLibrary
from sdapi.media import attachments
from sdapi.media.images import decode_init_image, decode_mask_image
from sdapi.service.catalog import ModelCatalog
from sdapi.upscalers.library import UpscalerLibrary


@dataclass(frozen=True)
class Admitted:
    """A request that passed every check: what the engine will run, and the init image's bytes to keep beside it."""

    params: GenerationParams
    init_image: bytes | None


class RequestChecks:
    """Runs the steps above for one request. Every step decides from the config, the catalog's reading of the model
    files and the LoRA library, never from a loaded engine: an API node (serve --role api) refuses exactly what
    `sdapi serve` refuses. What only a loaded model can tell fails the task on the worker as invalid_input."""

    def __init__(
        self,
        config: Config,
        catalog: ModelCatalog,
        library: LoraLibrary,
        resolver: Resolver,
        embeddings: EmbeddingLibrary,
        upscalers: UpscalerLibrary,
    ) -> None:
        self._config = config
        self._catalog = catalog
        self._library = library
        self._embeddings = embeddings
        self._upscalers = upscalers
        self._resolver = resolver
        self._callback_policy = CallbackPolicy.from_config(config.callbacks)

    async def check(self, request: GenerationRequest) -> Admitted:
        init_bytes: bytes | None = None
        init_info: InitImageInfo | None = None
        if request.init_image is not None:
            # Decoding a large image takes a while: off the event loop, so other requests are not held up.
            max_pixels = self._config.limits.max_init_image_pixels
            raw, info = await asyncio.to_thread(decode_init_image, request.init_image, max_pixels)
            parts = {attachments.INIT: raw}
            if request.mask_image is not None:
                # Kept beside the init image in the one stored blob (sdapi.media.attachments), as PNG.
                size = (info.width, info.height)
                parts[attachments.MASK] = await asyncio.to_thread(
                    decode_mask_image, request.mask_image, max_pixels, size
                )
            init_bytes, init_info = attachments.pack(parts), info
        model, family = self._catalog.resolve(request.model)
        capability = self._catalog.capability(model)
        other_model = None if model == self._catalog.default else model
        # Checking a file against another model's targets reads it: off the event loop.
        loras = await asyncio.to_thread(self._library.resolve, request.loras or [], family, other_model)
        prompts = [request.prompt, request.negative_prompt]
        if request.hires is not None:
            prompts += [request.hires.prompt, request.hires.negative_prompt]
        embeddings = self._embeddings.named_in(prompts, self._catalog.text_widths(model))
        params = resolve_params(
            request,
            self._config.defaults,
            self._config.limits,
            init_info,
            loras=loras,
            embeddings=embeddings,
            model=model,
            native_size=family.native_size,
            own_scheduler=capability.own_scheduler,
            upscalers=self._upscalers.usable(),
        )
        capability.check(params)
        if params.callback_url is not None:
            # Refused here, with a 400, rather than silently dropped when the task ends.
            await resolve_target(
                params.callback_url, self._callback_policy, self._resolver, self._config.callbacks.resolve_timeout
            )
        return Admitted(params, init_bytes)
