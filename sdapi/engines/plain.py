"""The plain recipe: text-to-image and image-to-image, one task's images in batches of the model's batch size, or a
cross-request batch of several tasks' in one pipeline call."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from sdapi.controlnets.running import ControlRun
from sdapi.core.params import GenerationParams
from sdapi.engines import Run, StepCallback
from sdapi.engines.primitives import (
    Pipelines,
    batch_step_reporter,
    clip_skip_argument,
    cpu_generators,
    eta_argument,
    image_size,
    no_denoising,
    report_gpu_memory,
    run_batches,
    unchanged,
)
from sdapi.engines.schedulers import make_scheduler
from sdapi.families import family_of_pipeline
from sdapi.previews.denoised import watch_scheduler


def make_plain_images(
    pipelines: Pipelines,
    params: GenerationParams,
    init_image: Image.Image | None,
    on_step: StepCallback | None,
    control: ControlRun | None,
) -> list[Image.Image]:
    """Text-to-image, or image-to-image from `init_image`; with `control`, its pipeline (the run's kind with the
    ControlNet units attached) makes the images."""
    pipeline = pipelines.image_to_image if init_image is not None else pipelines.text_to_image
    if control is not None:
        pipeline = control.pipeline
    pipeline.scheduler = make_scheduler(params, pipelines.scheduler_config)
    batch_size = pipelines.batch_size
    if init_image is not None:
        arguments: dict[str, Any] = {"image": init_image, "strength": params.strength}
        arguments |= image_size(pipeline, params)
        if control is not None:
            arguments |= control.arguments("control_image")
    else:
        arguments = {"width": params.width, "height": params.height}
        if control is not None:
            arguments |= control.arguments(control.text_to_image_key)
    if control is not None:
        # One image per call with ControlNet units: a batched ControlNet forward is not always bit-identical to the
        # one-image run on the CPU (seen after other models ran in the process), and image k must be seed + k's.
        batch_size = 1
    return run_batches(pipeline, params, arguments, batch_size, on_step, (params.width, params.height))


def make_batch_images(pipelines: Pipelines, members: list[Run]) -> list[list[Image.Image] | None]:
    """The images of a cross-request batch (sdapi.core.batching: every member shares the run's settings), as one
    pipeline call; None for a member that left (cancelled) during the run.

    Each member's prompts are encoded on their own, as its own run encodes them, and the batch's rows are the
    members' images in order, each with its own CPU generator: a member's pixels are those of its run alone, as
    the batches of one task's images are (within the seed rule's tolerance: kernels may round a batch of rows
    differently from one row). A member that leaves stays in the batch to the end, its rows computed and thrown
    away: removing them would mean reshaping every tensor the pipeline and its scheduler hold between steps."""
    first = members[0].params
    if no_denoising(first):
        return [unchanged(member.params, member.init_image) for member in members]
    pipeline = pipelines.image_to_image if first.is_image_to_image else pipelines.text_to_image
    pipeline.scheduler = make_scheduler(first, pipelines.scheduler_config)
    family = family_of_pipeline(pipeline).family
    if family.batches_prompt_lists:
        # Prompts as lists, one row per image: the pipeline encodes each row's prompt as its own run would.
        prompts = [member.params.prompt for member in members for _ in range(member.params.num_images)]
        negatives = [member.params.negative_prompt or "" for member in members for _ in range(member.params.num_images)]
        arguments: dict[str, Any] = family.prompt_arguments(prompts, negatives)
    else:
        arguments = _encoded_prompts(pipeline, first, members)
    seeds = [seed for member in members for seed in member.params.image_seeds()]
    if family.batches_prompt_lists:
        arguments |= clip_skip_argument(first)
    arguments |= eta_argument(first)  # (Euler's churn rides on the scheduler make_scheduler built)
    arguments |= {
        "num_inference_steps": first.num_inference_steps,
        "guidance_scale": first.guidance_scale,
        "num_images_per_prompt": 1,
        "generator": cpu_generators(seeds),
        "output_type": "pil",
    }
    if first.is_image_to_image:
        inits = [member.init_image for member in members for _ in range(member.params.num_images)]
        arguments |= {"image": inits, "strength": first.strength} | image_size(pipeline, first)
    else:
        arguments |= {"width": first.width, "height": first.height}
    arguments |= family.size_arguments((first.width, first.height))
    left: set[int] = set()
    arguments["callback_on_step_end"] = batch_step_reporter(
        members, left, watch_scheduler(pipeline), (first.width, first.height)
    )
    images = pipeline(**arguments).images
    report_gpu_memory()
    results: list[list[Image.Image] | None] = []
    start = 0
    for index, member in enumerate(members):
        end = start + member.params.num_images
        results.append(None if index in left else images[start:end])
        start = end
    return results


def _encoded_prompts(pipeline: Any, first: GenerationParams, members: list[Run]) -> dict[str, Any]:
    """The members' prompt embeddings, each member's encoded on its own by SD's encode_prompt, side by side."""
    guided = first.guidance_scale > 1
    encoded = [
        pipeline.encode_prompt(
            prompt=member.params.prompt,
            device=pipeline._execution_device,
            num_images_per_prompt=member.params.num_images,
            do_classifier_free_guidance=guided,
            negative_prompt=member.params.negative_prompt,
            **clip_skip_argument(first),
        )
        for member in members
    ]
    # (prompt, negative) embeddings, and on SDXL the pooled pair after them.
    names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    return {
        name: torch.cat([parts[index] for parts in encoded]) if encoded[0][index] is not None else None
        for index, name in enumerate(names[: len(encoded[0])])
    }
