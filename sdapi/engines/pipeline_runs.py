"""Running one request through a diffusers Stable Diffusion pipeline pair (text- and image-to-image).

Shared by the torch engine and the ONNX engine: optimum's ORT pipelines are diffusers pipelines whose UNet, VAE and
text encoder are ONNX Runtime sessions, so the scheduler math and the seed handling stay in torch, identical for
both engines.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from sdapi.engines.schedulers import make_scheduler
from sdapi.params import GenerationParams


def chunk(seeds: list[int], size: int) -> list[list[int]]:
    """Split the per-image seeds into batches of at most `size`."""
    return [seeds[start : start + size] for start in range(0, len(seeds), size)]


def cpu_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image: the same seed gives the same starting noise on every device and engine."""
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def run_request(
    text_to_image: Any,
    image_to_image: Any,
    scheduler_config: Any,
    params: GenerationParams,
    init_image: Image.Image | None,
    batch_size: int,
) -> list[Image.Image]:
    """The request's images: a fresh scheduler from the model's config, image k from seed + k, in batches."""
    pipeline = image_to_image if init_image is not None else text_to_image
    pipeline.scheduler = make_scheduler(params.scheduler or scheduler_config["_class_name"], scheduler_config)
    strength = params.strength
    if init_image is not None and strength is not None and int(params.num_inference_steps * strength) < 1:
        # No denoising step at this strength: the seed's "0.0 几乎不修改" — the input comes back unchanged.
        return [init_image.copy() for _ in range(params.num_images)]
    images: list[Image.Image] = []
    for seeds in chunk(params.image_seeds(), batch_size):
        arguments: dict[str, Any] = {
            "prompt": params.prompt,
            "negative_prompt": params.negative_prompt,
            "num_inference_steps": params.num_inference_steps,
            "guidance_scale": params.guidance_scale,
            "num_images_per_prompt": len(seeds),
            "generator": cpu_generators(seeds),
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
