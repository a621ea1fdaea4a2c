"""The one pipeline that checks a generation request before it becomes a task, in one named order; each step is
owned by one module and raises InvalidParameter (a 400) naming the field:

1. schema: the msgspec Struct the route or dialect decoded (sdapi.core.request), before this runs; then the named
   prompt styles are applied (sdapi.core.styles);
2. limits: the init image's size and pixels, from its header before decoding (sdapi.media.images);
3. model: the requested model exists and is served (sdapi.service.catalog);
4. LoRAs: each exists, is of the model's family and fits it (sdapi.loras.library); the embeddings the prompts
   name fit the model's text encoders (sdapi.embeddings.library); each ControlNet unit's model fits the model, its
   image decodes and its preprocessor exists (sdapi.controlnets); the VAE has the model's latents (sdapi.vaes);
5. scheduler and its options, sizes, seeds, defaults (sdapi.core.params, with the family's steps and guidance);
   then what the model's family cannot do: guidance above a distilled model's, a negative prompt it cannot use,
   sides off its multiple, add-on kinds it does not run (sdapi.families.ModelFamily.check);
6. engine capability: what the model's engine can serve, from its files (an ONNX-only export's sizes and LoRA set,
   its own scheduler in step 5): sdapi.service.catalog;
7. callback target: the URL resolves to an address callbacks may reach (sdapi.callbacks.ssrf).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import msgspec

from sdapi.addons import AddonRegistry
from sdapi.callbacks.ssrf import CallbackPolicy, Resolver, resolve_target
from sdapi.config import Config
from sdapi.controlnets.library import ControlNetLibrary
from sdapi.controlnets.preprocess import check_preprocessor
from sdapi.core.params import ControlUnitSpec, GenerationParams, InitImageInfo, IpAdapterSpec, resolve_params
from sdapi.core.request import GenerationRequest, VaeSpec
from sdapi.core.styles import StyleBook
from sdapi.embeddings.library import EmbeddingLibrary
from sdapi.errors import InvalidParameter
from sdapi.families import FAMILIES, ModelFamily
from sdapi.ip_adapters.library import IpAdapterLibrary
from sdapi.loras.library import LoraLibrary
from sdapi.media import attachments
from sdapi.media.images import decode_init_image, decode_mask_image
from sdapi.service.catalog import ModelCatalog
from sdapi.upscalers.library import UpscalerLibrary
from sdapi.vaes.library import VaeLibrary


@dataclass(frozen=True)
class Admitted:
    """A request that passed every check: what the engine will run, and the init image's bytes to keep beside it."""

    params: GenerationParams
    init_image: bytes | None


def refuse_unsupported_addons(family: ModelFamily, embeddings: bool, controlnets: bool, image_prompts: bool) -> None:
    """Raise InvalidParameter for an add-on kind the model's family cannot run here, naming the families that can."""
    label = family.family.label
    if embeddings and not family.family.embedding_widths:
        raise InvalidParameter("prompt", f"{label} 模型不支持文本反演嵌入（embeddings）")
    if controlnets and family.family.controlnet is None:
        which = "、".join(f.label for f in FAMILIES if f.controlnet is not None)
        raise InvalidParameter("controlnets", f"{label} 模型在本服务不支持 ControlNet；支持的家族：{which}")
    if image_prompts and not family.family.image_prompts:
        which = "、".join(f.label for f in FAMILIES if f.image_prompts)
        raise InvalidParameter("ip_adapters", f"{label} 模型不支持 IP-Adapter；支持的家族：{which}")


class RequestChecks:
    """Runs the steps above for one request. Every step decides from the config, the catalog's reading of the model
    files and the LoRA library, never from a loaded engine: an API node (serve --role api) refuses exactly what
    `sdapi serve` refuses. What only a loaded model can tell fails the task on the worker as invalid_input."""

    def __init__(
        self,
        config: Config,
        catalog: ModelCatalog,
        addons: AddonRegistry,
        resolver: Resolver,
    ) -> None:
        self._config = config
        self._catalog = catalog
        self._library = addons.of(LoraLibrary)
        self._embeddings = addons.of(EmbeddingLibrary)
        self._upscalers = addons.of(UpscalerLibrary)
        self._controlnets = addons.of(ControlNetLibrary)
        self._ip_adapters = addons.of(IpAdapterLibrary)
        self._vaes = addons.of(VaeLibrary)
        self._resolver = resolver
        self._callback_policy = CallbackPolicy.from_config(config.callbacks)
        self.styles = StyleBook(config.styles_path)

    async def check(self, request: GenerationRequest) -> Admitted:
        if request.styles:  # the styled prompts are the request's from here on (and what the task records)
            prompt, negative = await asyncio.to_thread(
                self.styles.apply, request.styles, request.prompt, request.negative_prompt
            )
            request = msgspec.structs.replace(request, prompt=prompt, negative_prompt=negative, styles=None)
        init_info: InitImageInfo | None = None
        parts: dict[str, bytes] = {}
        if request.init_image is not None:
            # Decoding a large image takes a while: off the event loop, so other requests are not held up.
            max_pixels = self._config.limits.max_init_image_pixels
            raw, info = await asyncio.to_thread(decode_init_image, request.init_image, max_pixels)
            parts[attachments.INIT], init_info = raw, info
            if request.mask_image is not None:
                # Kept beside the init image in the one stored blob (sdapi.media.attachments), as PNG.
                size = (info.width, info.height)
                parts[attachments.MASK] = await asyncio.to_thread(
                    decode_mask_image, request.mask_image, max_pixels, size
                )
        model, family = self._catalog.resolve(request.model)
        capability = self._catalog.capability(model)
        other_model = None if model == self._catalog.default else model
        # Checking a file against another model's targets reads it: off the event loop.
        loras = await asyncio.to_thread(self._library.resolve, request.loras or [], family, other_model)
        prompts = [request.prompt, request.negative_prompt]
        if request.hires is not None:
            prompts += [request.hires.prompt, request.hires.negative_prompt]
        embeddings = self._embeddings.named_in(prompts, self._catalog.text_widths(model))
        refuse_unsupported_addons(family, bool(embeddings), bool(request.controlnets), bool(request.ip_adapters))
        defaults = family.run_defaults
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
            controlnets=await self._control_units(request, model, family, parts),
            ip_adapters=await self._image_prompts(request, model, parts),
            schedulers=family.family.schedulers,
            model_defaults=(defaults.steps, defaults.guidance_scale),
            side_multiple=family.family.side_multiple,
            vae=await self._vae(request, family),
            tiling_above=self._config.vae.tiling_above_pixels,
            speed=self._catalog.speed(model),
        )
        family.check(params)
        capability.check(params)
        if params.callback_url is not None:
            # Refused here, with a 400, rather than silently dropped when the task ends.
            await resolve_target(
                params.callback_url, self._callback_policy, self._resolver, self._config.callbacks.resolve_timeout
            )
        return Admitted(params, attachments.pack(parts))

    async def _vae(self, request: GenerationRequest, family: ModelFamily) -> VaeSpec | None:
        """The request's VAE pinned by sha256; raise InvalidParameter for one that is unknown or does not fit."""
        if request.vae is None:
            return None
        entry, sha256 = await asyncio.to_thread(self._vaes.resolve, request.vae, family)
        return VaeSpec(entry.name, sha256)

    async def _image_prompts(
        self, request: GenerationRequest, model: str, parts: dict[str, bytes]
    ) -> tuple[IpAdapterSpec, ...]:
        """Check each IP-Adapter image prompt (its adapter fits the request's model, its image decodes within the
        limits) and keep its image in `parts` as ip/<index>."""
        specs = []
        text_width = self._catalog.unet_text_width(model)
        for index, prompt in enumerate(request.ip_adapters or []):
            field = f"ip_adapters[{index}]"
            sha256 = self._ip_adapters.resolve(prompt.model, text_width, field)
            max_pixels = self._config.limits.max_init_image_pixels
            raw, _ = await asyncio.to_thread(decode_init_image, prompt.image, max_pixels, f"{field}.image")
            parts[attachments.image_prompt(index)] = raw
            specs.append(IpAdapterSpec(model=prompt.model, sha256=sha256, weight=prompt.weight))
        return tuple(specs)

    async def _control_units(
        self, request: GenerationRequest, model: str, family: ModelFamily, parts: dict[str, bytes]
    ) -> tuple[ControlUnitSpec, ...]:
        """Check each ControlNet unit (its model fits the request's, its image decodes within the limits, its
        preprocessor and options exist) and keep its image in `parts` as control/<index>."""
        units = request.controlnets or []
        limit = self._config.controlnet.max_units
        if len(units) > limit:
            raise InvalidParameter(
                "controlnets", f"controlnets 最多 {limit} 个（controlnet.max_units），收到 {len(units)} 个"
            )
        support = family.family.controlnet
        if units and support is not None:
            windows = any(unit.guidance_start != 0.0 or unit.guidance_end != 1.0 for unit in units)
            modes = {unit.control_mode for unit in units}
            edit = request.init_image is not None
            problem = support.problem(len(units), edit, modes, windows, family.family.label)
            if problem is not None:
                raise InvalidParameter("controlnets", problem)
        specs = []
        text_width = self._catalog.unet_text_width(model)
        for index, unit in enumerate(units):
            field = f"controlnets[{index}]"
            _, sha256 = self._controlnets.resolve(unit.model, family, text_width, field)
            if unit.guidance_start > unit.guidance_end:
                raise InvalidParameter(field, f"{field}.guidance_start 不能大于 guidance_end")
            options = check_preprocessor(
                unit.preprocessor,
                dict(unit.preprocessor_options),
                f"{field}.preprocessor",
                request.mask_image is not None,
                self._config.annotators_path,
            )
            max_pixels = self._config.limits.max_init_image_pixels
            raw, _ = await asyncio.to_thread(decode_init_image, unit.image, max_pixels, f"{field}.image")
            parts[attachments.control(index)] = raw
            specs.append(
                ControlUnitSpec(
                    model=unit.model,
                    sha256=sha256,
                    preprocessor=unit.preprocessor,
                    preprocessor_options=options,
                    weight=unit.weight,
                    guidance_start=unit.guidance_start,
                    guidance_end=unit.guidance_end,
                    control_mode=unit.control_mode,
                    resize_mode=unit.resize_mode,
                )
            )
        return tuple(specs)
