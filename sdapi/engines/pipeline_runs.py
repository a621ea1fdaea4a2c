"""Running one request through a diffusers Stable Diffusion pipeline pair (text- and image-to-image).

Shared by the torch engine and the ONNX engine: optimum's ORT pipelines are diffusers pipelines whose UNet, VAE and
text encoder are ONNX Runtime sessions, so the scheduler math and the seed handling stay in torch, identical for
both engines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from sdapi.core.params import GenerationParams
from sdapi.core.tasks import CANCELLED_MESSAGE
from sdapi.engines import Run, StepCallback
from sdapi.engines.schedulers import make_scheduler
from sdapi.errors import TaskCancelled
from sdapi.observability import metrics


def chunk(seeds: list[int], size: int) -> list[list[int]]:
    """Split the per-image seeds into batches of at most `size`."""
    return [seeds[start : start + size] for start in range(0, len(seeds), size)]


def cpu_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image: the same seed gives the same starting noise on every device and engine."""
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


@dataclass(frozen=True)
class ControlRun:
    """A run's ControlNet units and image prompts: the pipeline of the run's kind with them attached, each active
    unit's image (preprocessed, at the output size) with its weight and guidance window, and the image prompts."""

    pipeline: Any
    images: list[Image.Image]
    scales: list[float]
    starts: list[float]
    ends: list[float]
    image_prompts: list[Image.Image] = field(default_factory=list)  # one per IP-Adapter loaded for the run

    def arguments(
        self, key: str, box: tuple[int, int, int, int] | None = None, size: tuple[int, int] | None = None
    ) -> dict[str, Any]:
        """The pipeline's ControlNet arguments, the images under `key` ("image" for text-to-image, "control_image"
        otherwise), cropped to `box` and resized to `size` when a masked-only area renders a crop."""
        arguments: dict[str, Any] = {}
        if self.image_prompts:
            arguments["ip_adapter_image"] = self.image_prompts
        images = self.images
        if not images:
            return arguments
        if box is not None and size is not None:
            images = [image.crop(box).resize(size, Image.Resampling.BILINEAR) for image in images]
        return arguments | {
            key: images,
            "controlnet_conditioning_scale": self.scales,
            "control_guidance_start": self.starts,
            "control_guidance_end": self.ends,
        }


def make_images(
    text_to_image: Any,
    image_to_image: Any,
    scheduler_config: Any,
    params: GenerationParams,
    init_image: Image.Image | None,
    batch_size: int,
    on_step: StepCallback | None = None,
    inpaint: Any = None,
    native_size: tuple[int, int] = (512, 512),
    neural_upscale: Callable[[str, Image.Image], Image.Image] | None = None,
    side_multiple: int = 8,
    control: ControlRun | None = None,
) -> list[Image.Image]:
    """The request's images: a fresh scheduler from the model's config, image k from seed + k, in batches.
    `on_step` hears of every denoising step (the pipeline's callback_on_step_end; ONNX pipelines are diffusers
    pipelines too). An inpainting task's `init_image` is RGBA, its alpha the mask: it runs on `inpaint`
    (sdapi.engines.inpainting), rendering a masked-only area at `native_size`'s area. A task with a second pass runs
    it (sdapi.engines.hires), with `neural_upscale` for the neural upscalers. With `control`, its pipeline (the
    run's kind with the ControlNet units attached) makes the images, the second pass's first pass included."""
    if no_denoising(params):
        return _unchanged(params, init_image)
    if params.hires is not None:
        from sdapi.engines.hires import make_hires_images

        return make_hires_images(
            text_to_image, image_to_image, scheduler_config, params, on_step, neural_upscale, control
        )
    if params.inpaint is not None:
        from sdapi.engines.inpainting import make_edited_images

        assert init_image is not None and inpaint is not None  # the worker opens the mask; the engine checks
        pipeline = control.pipeline if control is not None else inpaint
        pipeline.scheduler = make_scheduler(params, scheduler_config)
        return make_edited_images(pipeline, params, init_image, on_step, native_size, side_multiple, control)
    pipeline = image_to_image if init_image is not None else text_to_image
    if control is not None:
        pipeline = control.pipeline
    pipeline.scheduler = make_scheduler(params, scheduler_config)
    if init_image is not None:
        arguments: dict[str, Any] = {"image": init_image, "strength": params.strength}
        if control is not None:
            arguments |= control.arguments("control_image")
    else:
        arguments = {"width": params.width, "height": params.height}
        if control is not None:
            arguments |= control.arguments("image")
    if control is not None:
        # One image per call with ControlNet units: a batched ControlNet forward is not always bit-identical to the
        # one-image run on the CPU (seen after other models ran in the process), and image k must be seed + k's.
        batch_size = 1
    return run_batches(pipeline, params, arguments, batch_size, on_step, (params.width, params.height))


def no_denoising(params: GenerationParams) -> bool:
    """Whether an image-to-image run's strength leaves no denoising step: the seed's "0.0 几乎不修改" — the input
    comes back unchanged."""
    strength = params.strength
    return params.is_image_to_image and strength is not None and int(params.num_inference_steps * strength) < 1


def _unchanged(params: GenerationParams, init_image: Image.Image | None) -> list[Image.Image]:
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
    for index, seeds in enumerate(batches):
        batch_arguments: dict[str, Any] = {
            "prompt": params.prompt,
            "negative_prompt": params.negative_prompt,
            "num_inference_steps": params.num_inference_steps,
            "guidance_scale": params.guidance_scale,
            "num_images_per_prompt": len(seeds),
            "generator": cpu_generators(seeds),
            "output_type": "pil",
            **arguments,
        }
        batch_arguments |= size_conditioning(pipeline, size)
        if on_step is not None:
            batch_arguments["callback_on_step_end"] = _step_reporter(on_step, index, len(batches), len(images))
        images.extend(pipeline(**batch_arguments).images)
    report_gpu_memory()
    return images


def make_batch_images(
    text_to_image: Any, image_to_image: Any, scheduler_config: Any, members: list[Run]
) -> list[list[Image.Image] | None]:
    """The images of a cross-request batch (sdapi.core.batching: every member shares the run's settings), as one
    pipeline call; None for a member that left (cancelled) during the run.

    Each member's prompts are encoded on their own, as its own run encodes them, and the batch's rows are the
    members' images in order, each with its own CPU generator: a member's pixels are those of its run alone, as
    the batches of one task's images are (within the seed rule's tolerance: kernels may round a batch of rows
    differently from one row). A member that leaves stays in the batch to the end, its rows computed and thrown
    away: removing them would mean reshaping every tensor the pipeline and its scheduler hold between steps."""
    first = members[0].params
    if no_denoising(first):
        return [_unchanged(member.params, member.init_image) for member in members]
    pipeline = image_to_image if first.is_image_to_image else text_to_image
    pipeline.scheduler = make_scheduler(first, scheduler_config)
    guided = first.guidance_scale > 1
    encoded = [
        pipeline.encode_prompt(
            prompt=member.params.prompt,
            device=pipeline._execution_device,
            num_images_per_prompt=member.params.num_images,
            do_classifier_free_guidance=guided,
            negative_prompt=member.params.negative_prompt,
        )
        for member in members
    ]
    # (prompt, negative) embeddings, and on SDXL the pooled pair after them.
    names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    arguments: dict[str, Any] = {
        name: torch.cat([parts[index] for parts in encoded]) if encoded[0][index] is not None else None
        for index, name in enumerate(names[: len(encoded[0])])
    }
    seeds = [seed for member in members for seed in member.params.image_seeds()]
    arguments |= {
        "num_inference_steps": first.num_inference_steps,
        "guidance_scale": first.guidance_scale,
        "num_images_per_prompt": 1,
        "generator": cpu_generators(seeds),
        "output_type": "pil",
    }
    if first.is_image_to_image:
        inits = [member.init_image for member in members for _ in range(member.params.num_images)]
        arguments |= {"image": inits, "strength": first.strength}
    else:
        arguments |= {"width": first.width, "height": first.height}
    arguments |= size_conditioning(pipeline, (first.width, first.height))
    left: set[int] = set()
    arguments["callback_on_step_end"] = _batch_step_reporter(members, left)
    images = pipeline(**arguments).images
    report_gpu_memory()
    results: list[list[Image.Image] | None] = []
    start = 0
    for index, member in enumerate(members):
        end = start + member.params.num_images
        results.append(None if index in left else images[start:end])
        start = end
    return results


def _batch_step_reporter(members: list[Run], left: set[int]) -> Any:
    """A diffusers callback_on_step_end that reports each step to every member still in the batch; a member whose
    callback raises TaskCancelled joins `left`; when all have left, the run stops."""

    def reporter(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        total = int(pipeline.num_timesteps)
        for index, member in enumerate(members):
            if index in left:
                continue
            try:
                if member.on_step is not None:
                    member.on_step(step + 1, total, 0)
            except TaskCancelled:
                left.add(index)
        if len(left) == len(members):
            raise TaskCancelled(CANCELLED_MESSAGE)
        return callback_kwargs

    return reporter


def size_conditioning(pipeline: Any, size: tuple[int, int]) -> dict[str, Any]:
    """SDXL's micro-conditioning for a picture of `size` (width, height): an uncropped picture made at the size asked
    for (the output's size, also for image-to-image), which is what SDXL's training associates with whole,
    well-framed images. Nothing for the other families."""
    if getattr(pipeline, "text_encoder_2", None) is None:
        return {}
    height_width = (size[1], size[0])
    return {"original_size": height_width, "target_size": height_width, "crops_coords_top_left": (0, 0)}


def report_gpu_memory() -> None:
    """Publish torch's CUDA memory (now and at its peak) per device, when this process uses CUDA."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return
    for index in range(torch.cuda.device_count()):
        device = f"cuda:{index}"
        metrics.GPU_MEMORY_ALLOCATED.labels(device=device).set(torch.cuda.memory_allocated(index))
        metrics.GPU_MEMORY_PEAK.labels(device=device).set(torch.cuda.max_memory_allocated(index))


def _step_reporter(on_step: StepCallback, batch: int, batches: int, images_done: int) -> Any:
    """A diffusers callback_on_step_end that reports progress over the whole request to `on_step`."""

    def reporter(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        per_batch = int(pipeline.num_timesteps)  # the scheduler's real count (strength, second-order schedulers)
        on_step(batch * per_batch + step + 1, batches * per_batch, images_done)
        return callback_kwargs

    return reporter
