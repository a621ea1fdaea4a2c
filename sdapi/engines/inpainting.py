"""Inpainting and outpainting on a diffusers inpainting pipeline, the way AUTOMATIC1111 does it around the
denoising: the masked area's starting content, the optional crop to the masked area rendered at the model's
native size, and the composite that puts back every pixel the mask keeps.

Ordinary checkpoints inpaint by latent masking (diffusers' inpainting pipeline on a 4-channel UNet blends the
noised original back outside the mask at every step); inpainting checkpoints (a 9-channel UNet) see the mask and
the masked image themselves. Either way the result is composited over the original with the blurred mask, so
pixels the blurred mask keeps fully are exactly the original's.
"""

from __future__ import annotations

from typing import Any

import msgspec
from PIL import Image

from sdapi.controlnets.running import ControlRun
from sdapi.core.params import GenerationParams, InpaintParams
from sdapi.engines import StepCallback
from sdapi.engines.primitives import run_batches
from sdapi.media import masks


def as_edit(params: GenerationParams, init_image: Image.Image | None) -> tuple[GenerationParams, Image.Image]:
    """A text- or image-to-image request as an inpainting checkpoint runs it: everything repainted (a full mask,
    unblurred), on the init image or, for text-to-image, a grey canvas at full strength."""
    if init_image is None:
        edit = Image.new("RGBA", (params.width, params.height), (127, 127, 127, 255))
        params = msgspec.structs.replace(params, strength=1.0)
    else:
        edit = init_image.convert("RGBA")
        edit.putalpha(255)
    return msgspec.structs.replace(params, inpaint=InpaintParams(masked=True, blur=0)), edit


def starting_image(original: Image.Image, mask: Image.Image, params: GenerationParams) -> Image.Image:
    """What the masked area starts from (masked_content), before any denoising. Outpainting margins have no
    original content: with "original" they start filled from the picture's edges."""
    settings = params.inpaint
    assert settings is not None
    content = settings.content
    if content == "fill":
        return masks.fill(original, mask)
    if content == "latent_noise":
        return masks.noise(original, mask, params.seed)
    if content == "latent_nothing":
        return masks.flat(original, mask)
    if settings.outpaints:
        return masks.fill(original, masks.outpaint_margins(original.size, settings.outpaint))
    return original


def make_edited_images(
    pipeline: Any,
    params: GenerationParams,
    edit: Image.Image,
    on_step: StepCallback | None,
    native_size: tuple[int, int],
    side_multiple: int = 8,
    control: ControlRun | None = None,
) -> list[Image.Image]:
    """The images of an inpainting task whose init image `edit` is RGBA, alpha the mask (255 repaints); a
    masked-only crop renders at sides that are multiples of `side_multiple`."""
    settings = params.inpaint
    assert settings is not None
    original, mask = edit.convert("RGB"), edit.getchannel("A")
    if masks.is_empty(mask):  # nothing to repaint: the init image, as the seed rule would give at strength 0
        return [original.copy() for _ in range(params.num_images)]
    soft = masks.blurred(mask, settings.blur)
    start = starting_image(original, mask, params)
    if settings.area == "masked":
        box = masks.crop_region(soft, settings.padding, native_size[0] / native_size[1])
        limit = (native_size[0] * 2, native_size[1] * 2)
        size = masks.render_size(box, native_size, limit, side_multiple)
        image = start.crop(box).resize(size, Image.Resampling.LANCZOS)
        mask_image = soft.crop(box).resize(size, Image.Resampling.BILINEAR)
    else:
        box, size, image, mask_image = None, original.size, start, soft
    arguments: dict[str, Any] = {
        "image": image,
        "mask_image": mask_image,
        "strength": params.strength if params.strength is not None else 1.0,
        "width": size[0],
        "height": size[1],
    }
    if control is not None:  # the control images follow the crop the masked-only area renders
        arguments |= control.arguments("control_image", box, size if box is not None else None)
    results = []
    # One image per pipeline call: diffusers' inpainting pipelines encode the init image with the first generator
    # of a batch only, so image k of a batch would not be the picture of seed + k alone.
    for generated in run_batches(pipeline, params, arguments, 1, on_step, size):
        if box is not None:
            pasted = original.copy()
            pasted.paste(generated.resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.LANCZOS), box[:2])
            generated = pasted
        results.append(masks.composite(original, generated, soft))
    return results
