"""The high-resolution second pass ("hires fix"): each image made at the asked size, upscaled (its latents, or
its pixels by a resampling filter or a neural upscaler), then denoised again at the final size with image-to-image.

One image at a time, each from its own seed in both passes (a fresh generator of seed + k for each), so image k of
a batch is the picture a one-image request with seed + k gives. Progress counts both passes' steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import torch
from PIL import Image

from sdapi.controlnets.running import ControlRun
from sdapi.core.params import GenerationParams
from sdapi.core.request import LATENT_UPSCALERS
from sdapi.engines import StepCallback
from sdapi.engines.primitives import image_size, run_batches
from sdapi.engines.schedulers import make_scheduler
from sdapi.errors import InvalidParameter

# A neural upscaler by name: the picture in, the picture upscaled by the network's own factor out.
NeuralUpscale = Callable[[str, Image.Image], Image.Image]

_FILTERS = {"lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}


def upscale_latents(latents: torch.Tensor, upscaler: str, size: tuple[int, int]) -> torch.Tensor:
    """The first pass's latents resized to the final picture's `size` (width, height) / 8, as A1111's Latent
    upscalers do."""
    mode, antialias = LATENT_UPSCALERS[upscaler]
    target = (size[1] // 8, size[0] // 8)
    if mode in ("nearest", "nearest-exact"):
        return torch.nn.functional.interpolate(latents, size=target, mode=mode)
    return torch.nn.functional.interpolate(latents, size=target, mode=mode, antialias=antialias, align_corners=False)


def upscale_pixels(
    image: Image.Image, upscaler: str, size: tuple[int, int], neural: NeuralUpscale | None
) -> Image.Image:
    """The first picture resized to `size` by a filter, or by a neural upscaler then Lanczos to the exact size."""
    if upscaler in _FILTERS:
        return image.resize(size, _FILTERS[upscaler])
    if neural is None:
        raise InvalidParameter("hires", "此引擎未配置神经网络放大模型（upscalers）")
    upscaled = neural(upscaler, image)
    return upscaled if upscaled.size == size else upscaled.resize(size, Image.Resampling.LANCZOS)


def _as_picture(pipeline: Any, upscaled: Any, size: tuple[int, int]) -> Image.Image:
    """The upscaled first pass as the final picture: decoded by the VAE when it was upscaled in latents."""
    if isinstance(upscaled, Image.Image):
        return upscaled.convert("RGB")
    vae = pipeline.vae
    parameter = next(iter(vae.parameters()), None) if hasattr(vae, "parameters") else None  # ONNX Runtime's: none
    latents = upscaled.to(parameter.dtype if parameter is not None else torch.float32) / vae.config.scaling_factor
    with torch.inference_mode():
        output = vae.decode(latents)
    decoded = output[0] if isinstance(output, tuple) else output.sample
    picture: Image.Image = pipeline.image_processor.postprocess(decoded, output_type="pil")[0]
    return picture if picture.size == size else picture.resize(size, Image.Resampling.LANCZOS)


def make_hires_images(
    text_to_image: Any,
    image_to_image: Any,
    scheduler_config: Any,
    params: GenerationParams,
    on_step: StepCallback | None,
    neural: NeuralUpscale | None = None,
    control: ControlRun | None = None,
) -> list[Image.Image]:
    """The task's images; ControlNet units (`control`) guide the first pass."""
    hires = params.hires
    assert hires is not None
    first_steps = params.num_inference_steps
    # The image-to-image pass runs int(steps * strength) steps, as its scheduler will count them; none at all when
    # that is under one (A1111's denoising_strength 0: the upscaled first pass is the picture, as image-to-image
    # returns its input at such a strength).
    second_steps = int(hires.steps * hires.strength)
    per_image = first_steps + second_steps
    total = per_image * params.num_images
    final_size = (hires.width, hires.height)
    images: list[Image.Image] = []
    for index, seed in enumerate(params.image_seeds()):
        one = msgspec.structs.replace(params, num_images=1, seed=seed)

        def report(offset: int, images_done: int = index) -> StepCallback | None:
            if on_step is None:
                return None
            return lambda done, _total, _images: on_step(min(offset + done, total), total, images_done)

        first_pipeline = control.pipeline if control is not None else text_to_image
        first_pipeline.scheduler = make_scheduler(one, scheduler_config)
        first_arguments: dict[str, Any] = {
            "width": params.width,
            "height": params.height,
            "output_type": "latent" if hires.in_latents else "pil",
        }
        if control is not None:
            first_arguments |= control.arguments(control.text_to_image_key)
        first_report = report(index * per_image)
        first: Any  # a latent tensor [4, h, w] or a picture, as output_type says
        (first,) = run_batches(first_pipeline, one, first_arguments, 1, first_report, (params.width, params.height))
        if hires.in_latents:
            upscaled: Any = upscale_latents(first.unsqueeze(0), hires.upscaler, final_size)
        else:
            upscaled = upscale_pixels(first, hires.upscaler, final_size, neural)
        second = msgspec.structs.replace(
            one,
            prompt=hires.prompt if hires.prompt is not None else params.prompt,
            negative_prompt=hires.negative_prompt if hires.negative_prompt is not None else params.negative_prompt,
            num_inference_steps=hires.steps,
            width=hires.width,
            height=hires.height,
        )
        if second_steps < 1:
            images.append(_as_picture(image_to_image, upscaled, final_size))
            continue
        image_to_image.scheduler = make_scheduler(second, scheduler_config)
        arguments = {"image": upscaled, "strength": hires.strength} | image_size(image_to_image, second)
        second_report = report(index * per_image + first_steps)
        images.extend(run_batches(image_to_image, second, arguments, 1, second_report, final_size))
    return images
