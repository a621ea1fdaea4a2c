"""The torch engine: diffusers' Stable Diffusion pipelines, loaded once, shared by text- and image-to-image."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sdapi.config import ModelConfig
from sdapi.engines.adapters import AdapterManager, adapter_targets, target_shapes
from sdapi.engines.devices import choose_device, choose_dtype, dtype_name
from sdapi.engines.loading import load_pipeline
from sdapi.engines.schedulers import make_scheduler
from sdapi.errors import GenerationFailed
from sdapi.loras import LoraSpec
from sdapi.params import GenerationParams

logger = logging.getLogger(__name__)


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def chunk(seeds: list[int], size: int) -> list[list[int]]:
    """Split the per-image seeds into batches of at most `size`."""
    return [seeds[start : start + size] for start in range(0, len(seeds), size)]


class TorchEngine:
    """Engine on diffusers + torch. generate() must not be called concurrently (the worker runs one at a time)."""

    name = "torch"

    def __init__(
        self, model: ModelConfig, lora_files: Callable[[LoraSpec], Path] | None = None, lora_cache_size: int = 8
    ) -> None:
        self._model = model
        self._lora_files = lora_files
        self._lora_cache_size = lora_cache_size
        self.adapters: AdapterManager | None = None
        self.device = choose_device(model.device)
        self.dtype = choose_dtype(model.dtype, self.device)
        self._text_to_image: Any = None
        self._image_to_image: Any = None
        self._scheduler_config: Any = None
        self._loaded = threading.Event()

    @property
    def loaded(self) -> bool:
        return self._loaded.is_set()

    @property
    def pipeline(self) -> Any:
        """The loaded text-to-image pipeline (its modules are shared with image-to-image)."""
        return self._text_to_image

    def load(self) -> None:
        from diffusers import StableDiffusionImg2ImgPipeline

        pipeline = load_pipeline(self._model.path, self.dtype, self._model.single_file_config)
        pipeline.to(self.device)
        # from_pipe shares the already-loaded modules: image-to-image costs no second load or memory.
        self._image_to_image = StableDiffusionImg2ImgPipeline.from_pipe(pipeline)
        self._image_to_image.set_progress_bar_config(disable=True)
        self._text_to_image = pipeline
        # Kept pristine: every request builds its scheduler from this, so none leaks into the next.
        self._scheduler_config = pipeline.scheduler.config
        if self._lora_files is not None:
            targets = adapter_targets(pipeline.unet, pipeline.text_encoder)
            self.adapters = AdapterManager(targets, self._lora_files, self._lora_cache_size)
        self._loaded.set()
        logger.info("torch engine ready: %s on %s in %s", self._model.path, self.device, dtype_name(self.dtype))

    def describe(self) -> dict[str, str]:
        return {"device": self.device, "dtype": dtype_name(self.dtype)}

    def adapter_shapes(self) -> dict[str, tuple[int, ...]]:
        if self._text_to_image is None:
            return {}
        return target_shapes(adapter_targets(self._text_to_image.unet, self._text_to_image.text_encoder))

    def _generators(self, seeds: list[int]) -> list[torch.Generator]:
        # CPU generators on every device: the same seed gives the same starting noise on CPU and CUDA.
        return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]

    def generate(self, params: GenerationParams, init_image: Image.Image | None) -> list[Image.Image]:
        if not self.loaded:
            raise GenerationFailed("模型尚未加载完成")
        try:
            with torch.inference_mode():
                return self._generate(params, init_image)
        except GenerationFailed:
            raise
        except Exception as error:
            if _is_out_of_memory(error):
                if self.device == "cuda":
                    torch.cuda.empty_cache()
                raise GenerationFailed(
                    f"生成失败：显存/内存不足（{params.width}x{params.height}，{params.num_images} 张）。"
                    "请减小图片尺寸或张数后重试"
                ) from error
            raise

    def _generate(self, params: GenerationParams, init_image: Image.Image | None) -> list[Image.Image]:
        pipeline = self._image_to_image if init_image is not None else self._text_to_image
        if self.adapters is not None:
            self.adapters.activate(params.loras)
        elif params.loras:
            raise GenerationFailed("此引擎未配置 LoRA")
        scheduler_name = params.scheduler or self._scheduler_config["_class_name"]
        pipeline.scheduler = make_scheduler(scheduler_name, self._scheduler_config)
        if init_image is not None and params.strength is not None:
            denoising_steps = int(params.num_inference_steps * params.strength)
            if denoising_steps < 1:
                # No denoising step at this strength: the seed's "0.0 几乎不修改" — the input comes back unchanged.
                return [init_image.copy() for _ in range(params.num_images)]
        images: list[Image.Image] = []
        for seeds in chunk(params.image_seeds(), self._model.batch_size):
            arguments: dict[str, Any] = {
                "prompt": params.prompt,
                "negative_prompt": params.negative_prompt,
                "num_inference_steps": params.num_inference_steps,
                "guidance_scale": params.guidance_scale,
                "num_images_per_prompt": len(seeds),
                "generator": self._generators(seeds),
                "output_type": "pil",
            }
            if init_image is not None:
                arguments["image"] = init_image
                arguments["strength"] = params.strength
            else:
                arguments["width"] = params.width
                arguments["height"] = params.height
            images.extend(pipeline(**arguments).images)
        return images
