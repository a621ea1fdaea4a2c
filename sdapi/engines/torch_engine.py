"""The torch engine: diffusers' Stable Diffusion pipelines, loaded once, shared by text- and image-to-image."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sdapi.config import ModelConfig
from sdapi.controlnets.running import ControlNetFiles, ControlNetModels
from sdapi.controlnets.running import applied as controls_applied
from sdapi.core.params import GenerationParams
from sdapi.core.request import PIXEL_UPSCALERS, LoraSpec, VaeSpec
from sdapi.core.speed import SpeedSupport
from sdapi.embeddings.loading import EmbeddingFiles, PipelineEmbeddings
from sdapi.engines import (
    EngineDescription,
    Run,
    RunFacts,
    RunResult,
    facts_of,
    one_at_a_time,
)
from sdapi.engines.devices import Placement, choose_placement, dtype_name
from sdapi.engines.failures import engine_errors
from sdapi.engines.hires import NeuralUpscale
from sdapi.engines.inpainting import as_edit
from sdapi.engines.loading import load_pipeline, pipeline_from, place
from sdapi.engines.plain import make_batch_images
from sdapi.engines.primitives import Pipelines
from sdapi.engines.recipes import make_images
from sdapi.engines.schedulers import check_scheduler
from sdapi.engines.shared_encoders import SHARED_TEXT_ENCODERS
from sdapi.engines.speedups import speedups_applied
from sdapi.engines.tiling import tiling_applied
from sdapi.errors import ErrorCode, GenerationFailed, InvalidParameter
from sdapi.families import ModelFamily, family_of_pipeline
from sdapi.ip_adapters.running import IpAdapterFiles, IpAdapters
from sdapi.loras.merging import AdapterManager, adapter_targets, target_shapes
from sdapi.prompts.weighted_encoding import run_needs_weighting
from sdapi.vaes.running import VaeFiles, Vaes
from sdapi.vaes.tiny import load_tiny_decoder, tiny_decoder_folder

logger = logging.getLogger(__name__)


class TorchEngine:
    """Engine on diffusers + torch. generate() must not be called concurrently (the worker calls it from
    its one generation thread)."""

    name = "torch"

    def __init__(
        self,
        model: ModelConfig,
        lora_files: Callable[[LoraSpec], Path] | None = None,
        lora_cache_size: int = 8,
        embedding_files: EmbeddingFiles | None = None,
        neural_upscale: NeuralUpscale | None = None,
        controlnet_files: ControlNetFiles | None = None,
        controlnet_cache_size: int = 2,
        ip_adapter_files: IpAdapterFiles | None = None,
        *,
        placement: Placement | None = None,
        vae_files: VaeFiles | None = None,
        vae_cache_size: int = 2,
        tiny_vae_dir: Path | None = None,
    ) -> None:
        self._tiny_vae_dir = tiny_vae_dir
        self._tiny_decoder: Any = None  # loaded on the first run that asks for it (sdapi.vaes.tiny)
        self._tiny_folder: Path | None = None
        self._speed: SpeedSupport | None = None  # the levers this model runs, known once loaded
        self._vae_files = vae_files
        self._vae_cache_size = vae_cache_size
        self._vaes: Vaes | None = None
        self._ip_adapter_files = ip_adapter_files
        self._ip_adapters: IpAdapters | None = None
        self._model = model
        self._controlnet_files = controlnet_files
        self._controlnet_cache_size = controlnet_cache_size
        self._controlnets: ControlNetModels | None = None
        self._neural_upscale = neural_upscale
        self._lora_files = lora_files
        self._embedding_files = embedding_files
        self._embeddings: PipelineEmbeddings | None = None
        self._lora_cache_size = lora_cache_size
        self.adapters: AdapterManager | None = None
        # Chosen once per process by the engine factory; an engine built alone (tests, tools) reads its settings.
        placement = placement or choose_placement(model.device, model.dtype)
        self.device, self.dtype = placement.device, placement.dtype
        self._text_to_image: Any = None
        self._image_to_image: Any = None
        self._inpaint: Any = None
        self._scheduler_config: Any = None
        self._loaded = threading.Event()
        self.family: ModelFamily | None = None  # known once loaded

    @property
    def loaded(self) -> bool:
        return self._loaded.is_set()

    def load(self) -> None:
        model = self._model
        # Text encoders another loaded model has are taken, not loaded again (not under CPU offload: its hooks are
        # each pipeline's own).
        shared = SHARED_TEXT_ENCODERS if model.offload == "none" else None
        pipeline = load_pipeline(
            model.path, self.dtype, model.single_file_config, model.with_optional_text_encoder, shared
        )
        place(pipeline, self.device, self._model.offload)
        self.family = family_of_pipeline(pipeline, self._model.guidance)
        family = self.family.family
        if self.family.inpainting:
            # An inpainting checkpoint runs everything on its inpainting pipeline (as_edit below).
            self._image_to_image = self._inpaint = pipeline
        else:
            # from_pipe shares the already-loaded modules: these cost no second load or memory. A family without an
            # image-to-image pipeline repaints the whole picture on its inpainting one (as_edit below).
            self._inpaint = pipeline_from(pipeline, family.inpainting_pipeline, "AutoPipelineForInpainting")
            self._image_to_image = (
                self._inpaint
                if family.repaints_for_image_to_image
                else pipeline_from(pipeline, family.image_to_image_pipeline, "AutoPipelineForImage2Image")
            )
        self._text_to_image = pipeline
        # Kept pristine: every request builds its scheduler from this, so none leaks into the next.
        self._scheduler_config = pipeline.scheduler.config
        if self._ip_adapter_files is not None:
            self._ip_adapters = IpAdapters(self._ip_adapter_files, self.device, self.dtype)
        if self._controlnet_files is not None:
            self._controlnets = ControlNetModels(
                self._controlnet_files, self._controlnet_cache_size, self.device, self.dtype
            )
        if self._vae_files is not None:
            self._vaes = Vaes(self._vae_files, self._vae_cache_size, self.device, self.dtype)
        # Image-to-image shares the text encoders and tokenizers: embeddings loaded once serve both.
        self._embeddings = PipelineEmbeddings(pipeline, self._embedding_files)
        self._tiny_folder = tiny_decoder_folder(model.path, family, self._tiny_vae_dir)
        unet = getattr(pipeline, "unet", None)
        self._speed = SpeedSupport(
            label=family.label,
            tiny_decoder=self._tiny_folder is not None,
            step_caches=family.step_caches,
            token_merging=family.token_merging,
            # DeepCache's three branches per level of the UNet (sdapi.core.request.MAX_CACHE_BRANCH)
            deepcache_branches=None if unet is None else 3 * len(unet.down_blocks),
        )
        if self._lora_files is not None:
            targets = adapter_targets(self.family.family, self.family.family.adapter_modules(pipeline))
            self.adapters = AdapterManager(targets, self._lora_files, self._lora_cache_size)
        self._loaded.set()
        logger.info("torch engine ready: %s on %s in %s", self._model.path, self.device, dtype_name(self.dtype))

    def describe(self) -> EngineDescription:
        scheduler = "" if self._scheduler_config is None else str(self._scheduler_config["_class_name"])
        return EngineDescription(device=self.device, dtype=dtype_name(self.dtype), scheduler=scheduler)

    def adapter_shapes(self) -> dict[str, tuple[int, ...]]:
        if self._text_to_image is None:
            return {}
        assert self.family is not None  # set by load(), with the pipeline
        family = self.family.family
        return target_shapes(adapter_targets(family, family.adapter_modules(self._text_to_image)))

    def check(self, params: GenerationParams) -> None:
        """Every size and LoRA set the params rules allow runs on torch, given the folders (LoRAs, embeddings,
        upscalers, ControlNets, IP-Adapters) its requests name."""
        if params.loras and self._lora_files is None:
            raise InvalidParameter("loras", "此引擎未配置 LoRA")
        if params.embeddings and self._embedding_files is None:
            raise InvalidParameter("prompt", "此引擎未配置嵌入（embeddings）")
        hires = params.hires
        neural = hires is not None and not hires.in_latents and hires.upscaler not in PIXEL_UPSCALERS
        if neural and self._neural_upscale is None:
            raise InvalidParameter("hires", "此引擎未配置神经网络放大模型（upscalers）")
        if params.controlnets and self._controlnet_files is None:
            raise InvalidParameter("controlnets", "此引擎未配置 ControlNet（controlnet.dir）")
        if params.ip_adapters and self._ip_adapter_files is None:
            raise InvalidParameter("ip_adapters", "此引擎未配置 IP-Adapter（ip_adapter.dir）")
        if self._scheduler_config is not None:
            check_scheduler(params, self._scheduler_config)
        self._check_speedups(params)

    def _check_speedups(self, params: GenerationParams) -> None:
        """The speed levers admission let through (sdapi.core.speed) run on this model: checked again here, where
        the model's files are (a worker's tiny decoder folder may differ from the API node's)."""
        if self._speed is not None:
            self._speed.check(params.vae_decoder, params.step_cache, params.token_merging)

    def generate(self, run: Run) -> RunResult:
        if not self.loaded:
            raise GenerationFailed("模型尚未加载完成", ErrorCode.MODEL_NOT_LOADED)
        with engine_errors(run.params), torch.inference_mode():
            images = self._generate(run)
        return RunResult(images, self._facts(run.params))

    def generate_batch(self, runs: list[Run]) -> list[RunResult | None]:
        if not self.loaded:
            raise GenerationFailed("模型尚未加载完成", ErrorCode.MODEL_NOT_LOADED)
        assert self._embeddings is not None and self.family is not None  # set by load()
        if self._repaints(runs[0].params):  # its runs are repaints (as_edit): one task at a time
            return one_at_a_time(self, runs)
        if self.family.family.weighted_prompts and any(
            run_needs_weighting(self._text_to_image, run.params) for run in runs
        ):  # encoded on their own (sdapi.prompts), perhaps in more chunks than the others: one task at a time
            return one_at_a_time(self, runs)
        first = runs[0].params
        # One LoRA set, one VAE and one tiling: the batch key's.
        with engine_errors(first), torch.inference_mode(), self._loras_applied(first.loras):
            embedded = [replace(run, params=self._embeddings.apply(run.params)) for run in runs]
            with (
                self._vae_applied(first.vae),
                tiling_applied(self._tileable(), first.tiling),
                self._speedups_applied(first),
            ):
                batches = make_batch_images(self._pipelines(), embedded)
        return [
            None if images is None else RunResult(images, self._facts(run.params))
            for run, images in zip(runs, batches, strict=True)
        ]

    def _facts(self, params: GenerationParams) -> RunFacts:
        return facts_of(
            params,
            engine=self.name,
            scheduler_config=self._scheduler_config,
            dtype=dtype_name(self.dtype),
            device=self.device,
            family=self.family.family.label if self.family is not None else "",
        )

    def _loras_applied(self, loras: tuple[LoraSpec, ...]) -> contextlib.AbstractContextManager[None]:
        """Exactly `loras` merged into the model for the run (any other set restored first)."""
        if self.adapters is not None:
            return self.adapters.applied(loras)
        if loras:
            raise GenerationFailed("此引擎未配置 LoRA", ErrorCode.INVALID_INPUT)
        return contextlib.nullcontext()

    def _generate(self, run: Run) -> list[Image.Image]:
        """The run's images, each add-on kind it names applied for this run alone (sdapi.core.addons: applied
        contexts that leave nothing behind that a later run could see), in the order they build on each other:
        LoRAs merge into the modules, embeddings become tokens the prompts name, image prompts' adapters load into
        the UNet, a VAE of vae.dir replaces the model's own, ControlNet units attach to a pipeline made from it,
        and the UNet's and VAE's convolutions wrap around for seamless tiling."""
        assert self._embeddings is not None and self.family is not None  # set by load()
        params, init_image = run.params, run.init_image
        prompts = [prompt for prompt in params.ip_adapters if prompt.weight > 0]
        if prompts and self._ip_adapters is None:
            raise GenerationFailed("此引擎未配置 IP-Adapter（ip_adapter.dir）", ErrorCode.INVALID_INPUT)
        with contextlib.ExitStack() as applied:
            applied.enter_context(self._loras_applied(params.loras))
            # Before the ControlNet pipeline below is made: it takes the run's VAE too.
            applied.enter_context(self._vae_applied(params.vae))
            params = applied.enter_context(self._embeddings.applied(params))
            if self._repaints(params):
                params, init_image = as_edit(params, init_image)
            if prompts and self._ip_adapters is not None:
                applied.enter_context(self._ip_adapters.applied(self._text_to_image, prompts))
            conditioning = run.conditioning
            control = applied.enter_context(
                controls_applied(
                    self._controlnets,
                    self._text_to_image,
                    self.family.family,
                    params,
                    conditioning.controls,
                    conditioning.image_prompts,
                )
            )
            # Last: the convolutions as the adapters left them.
            applied.enter_context(tiling_applied(self._tileable(), params.tiling))
            applied.enter_context(self._speedups_applied(params))
            return make_images(self._pipelines(), params, init_image, run.on_step, self._neural_upscale, control)

    def _vae_applied(self, vae: VaeSpec | None) -> contextlib.AbstractContextManager[None]:
        """`vae` (vae.dir) in every pipeline of the model for the run (None: the model's own stays)."""
        if vae is None:
            return contextlib.nullcontext()
        if self._vaes is None:
            raise GenerationFailed("此引擎未配置 VAE（vae.dir）", ErrorCode.INVALID_INPUT)
        return self._vaes.applied([self._text_to_image, self._image_to_image, self._inpaint], vae)

    def _speedups_applied(self, params: GenerationParams) -> contextlib.AbstractContextManager[None]:
        """The run's speed levers (a step cache, token merging, the tiny decoder or a tiled VAE) for the run."""
        self._check_speedups(params)
        return speedups_applied(self._text_to_image, params, self._tiny() if params.vae_decoder == "tiny" else None)

    def _tiny(self) -> Any:
        """The model's tiny decoder, loaded once (a few MB)."""
        if self._tiny_decoder is None and self._tiny_folder is not None:
            self._tiny_decoder = load_tiny_decoder(self._tiny_folder, self.device, self.dtype)
        return self._tiny_decoder

    def _tileable(self) -> list[Any]:
        """The modules seamless tiling changes: the UNet and the VAE (every pipeline of the model shares them)."""
        parts = (getattr(self._text_to_image, part, None) for part in ("unet", "vae"))
        return [part for part in parts if part is not None]

    def _repaints(self, params: GenerationParams) -> bool:
        """Whether a run that is no inpainting request runs as a repaint of the whole picture: every run of an
        inpainting checkpoint, and image-to-image on a family without an image-to-image pipeline."""
        assert self.family is not None  # set by load()
        if params.inpaint is not None:
            return False
        return self.family.inpainting or (params.is_image_to_image and self.family.family.repaints_for_image_to_image)

    def _pipelines(self) -> Pipelines:
        assert self.family is not None  # set by load()
        return Pipelines(
            text_to_image=self._text_to_image,
            image_to_image=self._image_to_image,
            inpaint=self._inpaint,
            scheduler_config=self._scheduler_config,
            batch_size=self._model.batch_size,
            native_size=self.family.native_size,
        )
