"""Which recipe makes a run's images: unchanged (no denoising step left), A1111's SD upscale (sd_upscale.py), the
second pass (hires.py), inpainting and outpainting (inpainting.py), or plain text- and image-to-image (plain.py).
The one place that knows them all."""

from __future__ import annotations

from PIL import Image

from sdapi.controlnets.running import ControlRun
from sdapi.core.params import GenerationParams
from sdapi.engines import StepCallback
from sdapi.engines.hires import NeuralUpscale, make_hires_images
from sdapi.engines.inpainting import make_edited_images
from sdapi.engines.plain import make_plain_images
from sdapi.engines.primitives import Pipelines, no_denoising, unchanged
from sdapi.engines.schedulers import make_scheduler
from sdapi.engines.sd_upscale import make_sd_upscale_images


def make_images(
    pipelines: Pipelines,
    params: GenerationParams,
    init_image: Image.Image | None,
    on_step: StepCallback | None = None,
    neural_upscale: NeuralUpscale | None = None,
    control: ControlRun | None = None,
) -> list[Image.Image]:
    """The request's images: a fresh scheduler from the model's config, image k from seed + k, in batches.
    `on_step` hears of every denoising step (the pipeline's callback_on_step_end; ONNX pipelines are diffusers
    pipelines too). An inpainting task's `init_image` is RGBA, its alpha the mask: it runs on the inpainting
    pipeline (sdapi.engines.inpainting), rendering a masked-only area at the native size's area. A task with a
    second pass runs it (sdapi.engines.hires), with `neural_upscale` for the neural upscalers. With `control`, its
    pipeline (the run's kind with the ControlNet units attached) makes the images, the second pass's first pass
    included. A task with sd_upscale is redrawn tile by tile (sdapi.engines.sd_upscale)."""
    scheduler_config = pipelines.scheduler_config
    if params.sd_upscale is not None:  # (at a strength of no step: the init image upscaled)
        assert init_image is not None  # admission asks for one
        return make_sd_upscale_images(
            pipelines.image_to_image, scheduler_config, params, init_image, on_step, neural_upscale
        )
    if no_denoising(params):
        return unchanged(params, init_image)
    if params.hires is not None:
        return make_hires_images(
            pipelines.text_to_image,
            pipelines.image_to_image,
            scheduler_config,
            params,
            on_step,
            neural_upscale,
            control,
        )
    if params.inpaint is not None:
        assert init_image is not None and pipelines.inpaint is not None  # the worker opens the mask
        pipeline = control.pipeline if control is not None else pipelines.inpaint
        pipeline.scheduler = make_scheduler(params, scheduler_config)
        return make_edited_images(
            pipeline, params, init_image, on_step, pipelines.native_size, pipelines.side_multiple, control
        )
    return make_plain_images(pipelines, params, init_image, on_step, control)
