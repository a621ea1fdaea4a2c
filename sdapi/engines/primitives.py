"""The primitives every kind of run is made of: pipeline calls in batches with image k from seed + k (a CPU generator
per image, the family's prompt arguments and size conditioning), step callbacks that report progress over the whole
run, the picture's size for the image-to-image pipelines that take one, and GPU memory figures. The recipes
(plain.py, inpainting.py, hires.py, dispatched by recipes.py) call these; nothing here imports a recipe.

Shared by the torch engine and the ONNX engine: optimum's ORT pipelines are diffusers pipelines whose UNet, VAE and
text encoder are ONNX Runtime sessions, so the scheduler math and the seed handling stay in torch, identical for
both engines.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from sdapi.core.params import GenerationParams
from sdapi.core.tasks import CANCELLED_MESSAGE
from sdapi.engines import Run, StepCallback
from sdapi.engines.conditioning import conditioning_switch, tensor_inputs
from sdapi.engines.noise import variation_latents
from sdapi.errors import SkipCurrentImage, TaskCancelled
from sdapi.families import Family, family_of_pipeline
from sdapi.observability import metrics
from sdapi.previews.denoised import StepWatch, watch_scheduler
from sdapi.previews.drawing import drawable
from sdapi.previews.pictures import preview_picture
from sdapi.prompts.weighted_encoding import run_needs_weighting, scheduled_embeddings


@dataclass(frozen=True)
class Pipelines:
    """A loaded model's pipelines for each kind of run (sharing their modules), its scheduler config (every run
    builds a fresh scheduler from it), and what shapes its runs: images per pipeline call, the native size a
    masked-only area renders at, and the multiple its sides must be."""

    text_to_image: Any
    image_to_image: Any
    inpaint: Any
    scheduler_config: Any
    batch_size: int
    native_size: tuple[int, int] = (512, 512)
    side_multiple: int = 8


def chunk(seeds: list[int], size: int) -> list[list[int]]:
    """Split the per-image seeds into batches of at most `size`."""
    return [seeds[start : start + size] for start in range(0, len(seeds), size)]


def cpu_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image: the same seed gives the same starting noise on every device and engine."""
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def no_denoising(params: GenerationParams) -> bool:
    """Whether an image-to-image run's strength leaves no denoising step: the seed's "0.0 几乎不修改" — the input
    comes back unchanged."""
    strength = params.strength
    return params.is_image_to_image and strength is not None and int(params.num_inference_steps * strength) < 1


def unchanged(params: GenerationParams, init_image: Image.Image | None) -> list[Image.Image]:
    assert init_image is not None  # an image-to-image run has its init image (the worker opens it)
    return [init_image.convert("RGB") for _ in range(params.num_images)]


def run_batches(
    pipeline: Any,
    params: GenerationParams,
    arguments: dict[str, Any],
    batch_size: int,
    on_step: StepCallback | None,
    size: tuple[int, int],
) -> list[Image.Image]:
    """Run `pipeline` with `arguments` (its image inputs) for every image of the request, image k from seed + k,
    in batches of `batch_size`; `size` (width, height) is the picture the pipeline makes."""
    images: list[Image.Image] = []
    batches = chunk(params.image_seeds(), batch_size)
    family = family_of_pipeline(pipeline).family
    conditioning = prompt_conditioning(pipeline, family, params)
    for index, seeds in enumerate(batches):
        generators = cpu_generators(seeds)
        batch_arguments: dict[str, Any] = {
            **conditioning[0][1],
            "num_inference_steps": params.num_inference_steps,
            "guidance_scale": params.guidance_scale,
            "num_images_per_prompt": len(seeds),
            "generator": generators,
            "output_type": "pil",
            **clip_skip_argument(params),
            **eta_argument(params),
            **arguments,
        }
        if params.shapes_noise and "image" not in arguments:  # text-to-image (a second pass starts from its image)
            batch_arguments["latents"] = variation_latents(params, seeds, generators, _latent_shape(pipeline, size))
        batch_arguments |= family.size_arguments(size)
        callbacks = []
        if len(conditioning) > 1:  # prompt editing or alternation: the conditioning changes between steps
            callbacks.append(conditioning_switch(conditioning, len(seeds)))
            batch_arguments["callback_on_step_end_tensor_inputs"] = tensor_inputs(pipeline)
        if on_step is not None:
            watch = watch_scheduler(pipeline)
            callbacks.append(_step_reporter(on_step, index, len(batches), len(images), watch, size))
        if callbacks:
            batch_arguments["callback_on_step_end"] = _chained(callbacks)
        # Some pipelines also draw from torch's global generator (SD 3.x's ControlNet pipeline samples its control
        # image's latents without the request's): seeded from the batch's first seed, the same seed still gives
        # the same pixels.
        torch.manual_seed(seeds[0])
        images.extend(pipeline(**batch_arguments).images)
    report_gpu_memory()
    return images


def prompt_conditioning(pipeline: Any, family: Family, params: GenerationParams) -> list[tuple[int, dict[str, Any]]]:
    """The pipeline call's prompt arguments, per stretch of steps [(end_at_step, arguments)]: A1111's syntax encoded
    (sdapi.prompts) where the run reads it and the prompts use it (or run past one chunk), with one entry per
    stretch for prompt editing and alternation; else one entry, the prompt strings for the pipeline to encode."""
    if family.weighted_prompts and run_needs_weighting(pipeline, params):
        return scheduled_embeddings(
            pipeline, params.prompt, params.negative_prompt, params.diffusers_clip_skip, params.num_inference_steps
        )
    return [(params.num_inference_steps, family.prompt_arguments(params.prompt, params.negative_prompt))]


def _chained(callbacks: list[Any]) -> Any:
    """One callback_on_step_end running diffusers step callbacks in order, each on what the one before returned."""

    def chained(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        for callback in callbacks:
            callback_kwargs = callback(pipeline, step, timestep, callback_kwargs)
        return callback_kwargs

    return chained


def _latent_shape(pipeline: Any, size: tuple[int, int]) -> tuple[int, int, int]:
    """(channels, h, w) of a UNet pipeline's starting latents for a picture of `size` (width, height)."""
    factor = pipeline.vae_scale_factor
    return (pipeline.unet.config.in_channels, size[1] // factor, size[0] // factor)


def clip_skip_argument(params: GenerationParams) -> dict[str, Any]:
    """The pipeline call's clip_skip for `params` (nothing at the default: every pipeline takes that)."""
    skip = params.diffusers_clip_skip
    return {} if skip is None else {"clip_skip": skip}


def eta_argument(params: GenerationParams) -> dict[str, Any]:
    """The pipeline call's eta (DDIM's: the pipeline hands it to the scheduler's step), when the run sets one."""
    return {"eta": params.step_options["eta"]} if "eta" in params.step_options else {}


def batch_step_reporter(members: list[Run], left: set[int], watch: StepWatch, size: tuple[int, int]) -> Any:
    """A diffusers callback_on_step_end that reports each step to every member still in the batch (a member may
    draw its first image's preview then); a member whose callback raises TaskCancelled joins `left`; when all have
    left, the run stops. `size` is the picture's (width, height)."""

    def reporter(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        total = int(pipeline.num_timesteps)
        row = 0  # each member's first row in the batch
        for index, member in enumerate(members):
            first_row, row = row, row + member.params.num_images
            if index in left:
                continue
            try:
                if member.on_step is not None:
                    with drawable(_drawer(pipeline, watch, callback_kwargs, size, first_row)):
                        member.on_step(step + 1, total, 0)
            except TaskCancelled:
                left.add(index)
            except SkipCurrentImage:  # one member's rows cannot end early alone: its images run to the end
                pass
        if len(left) == len(members):
            raise TaskCancelled(CANCELLED_MESSAGE)
        return callback_kwargs

    return reporter


def image_size(pipeline: Any, params: GenerationParams) -> dict[str, Any]:
    """The picture's size for an image-to-image pipeline whose call takes one (the transformer families' make their
    native size otherwise); nothing for SD's, which make the init image's."""
    takes_size = "width" in inspect.signature(type(pipeline).__call__).parameters
    return {"width": params.width, "height": params.height} if takes_size else {}


def report_gpu_memory() -> None:
    """Publish torch's CUDA memory (now and at its peak) per device, when this process uses CUDA."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return
    for index in range(torch.cuda.device_count()):
        device = f"cuda:{index}"
        metrics.GPU_MEMORY_ALLOCATED.labels(device=device).set(torch.cuda.memory_allocated(index))
        metrics.GPU_MEMORY_PEAK.labels(device=device).set(torch.cuda.max_memory_allocated(index))


def _step_reporter(
    on_step: StepCallback, batch: int, batches: int, images_done: int, watch: StepWatch, size: tuple[int, int]
) -> Any:
    """A diffusers callback_on_step_end that reports progress over the whole request to `on_step`, which may draw
    the batch's first image's preview while it hears of the step."""

    def reporter(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        per_batch = int(pipeline.num_timesteps)  # the scheduler's real count (strength, second-order schedulers)
        try:
            with drawable(_drawer(pipeline, watch, callback_kwargs, size, 0)):
                on_step(batch * per_batch + step + 1, batches * per_batch, images_done)
        except SkipCurrentImage:
            # diffusers' pipelines skip their remaining steps once interrupted and decode what they have: this
            # call's images come out as far as they got (A1111's skip), and the next call starts afresh.
            pipeline._interrupt = True
        return callback_kwargs

    return reporter


def _drawer(pipeline: Any, watch: StepWatch, callback_kwargs: dict[str, Any], size: tuple[int, int], row: int) -> Any:
    """What draws row `row`'s preview of this step, if the step callback asks (sdapi.previews.drawing)."""

    def draw(max_side: int, decoder: str | None) -> Image.Image:
        return preview_picture(pipeline, watch, callback_kwargs["latents"], size, row, max_side, decoder)

    return draw
