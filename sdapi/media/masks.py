"""Masks for inpainting and outpainting, as pure image operations (PIL and numpy): reading a client's mask, keeping
it as PNG, and the steps around the denoising (the canvas, blur, crop, fill, composite).

A mask is an 8-bit greyscale image of the init image's size: 255 repaints, 0 keeps, grey is partial. A client's
mask with transparency is read by its alpha channel (opaque repaints), as AUTOMATIC1111 reads it; one without, by
its luminance. The mask is stored beside the init image (sdapi.media.attachments) until the task ends.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageFilter

from sdapi.errors import InvalidParameter


def mask_from_image(image: Image.Image) -> Image.Image:
    """The repaint mask ("L") of a client's image: its alpha where it has transparency (an alpha channel that is
    not opaque everywhere, as A1111 decides), else its luminance."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema() != (255, 255):
            return alpha
    return image.convert("L")


def mask_from_transparency(image: Image.Image) -> Image.Image | None:
    """OpenAI's mask convention as sdapi's mask: fully transparent pixels (alpha 0) are edited, the rest kept.
    None when the image has no alpha channel to read."""
    if not (image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)):
        return None
    alpha = image.convert("RGBA").getchannel("A")
    return alpha.point(lambda value: 255 if value == 0 else 0)


def rounded(mask: Image.Image) -> Image.Image:
    """The mask made black and white at half grey, as A1111's mask_round."""
    return mask.point(lambda value: 255 if value > 127 else 0)


def encode_mask(mask: Image.Image) -> bytes:
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def outpaint_canvas(
    image: Image.Image, mask: Image.Image | None, left: int, top: int, right: int, bottom: int
) -> tuple[Image.Image, Image.Image]:
    """The grown canvas with `image` at (left, top), and its mask: the new margins repaint, plus `mask` (if any)
    over the original."""
    width, height = image.width + left + right, image.height + top + bottom
    canvas = Image.new("RGB", (width, height), (127, 127, 127))
    canvas.paste(image, (left, top))
    grown = Image.new("L", (width, height), 255)
    grown.paste(mask if mask is not None else Image.new("L", image.size, 0), (left, top))
    return canvas, grown


def outpaint_margins(size: tuple[int, int], outpaint: tuple[int, int, int, int]) -> Image.Image:
    """The mask of a grown canvas's new margins (left, top, right, bottom), the original's area black."""
    left, top, right, bottom = outpaint
    margins = Image.new("L", size, 255)
    margins.paste(0, (left, top, max(size[0] - right, left), max(size[1] - bottom, top)))
    return margins


def blurred(mask: Image.Image, radius: int) -> Image.Image:
    """The mask softened by a Gaussian blur of `radius` pixels (0: unchanged), as A1111's mask_blur."""
    return mask if radius <= 0 else mask.filter(ImageFilter.GaussianBlur(radius))


def is_empty(mask: Image.Image) -> bool:
    """Whether the mask repaints nothing."""
    return mask.getbbox() is None


def crop_region(mask: Image.Image, padding: int, aspect: float) -> tuple[int, int, int, int]:
    """The box around what the mask repaints, grown by `padding` pixels and then to the `aspect` ratio (width /
    height) where the image allows, as A1111's "only masked" area; (left, top, right, bottom)."""
    box = mask.getbbox()
    assert box is not None  # callers return the init image for an empty mask before this
    left, top, right, bottom = box
    left, top = max(left - padding, 0), max(top - padding, 0)
    right, bottom = min(right + padding, mask.width), min(bottom + padding, mask.height)
    width, height = right - left, bottom - top
    if width / height < aspect:  # too narrow: widen, centred, within the image
        grow = min(round(height * aspect), mask.width) - width
        left = max(min(left - grow // 2, mask.width - (width + grow)), 0)
        right = left + width + grow
    else:
        grow = min(round(width / aspect), mask.height) - height
        top = max(min(top - grow // 2, mask.height - (height + grow)), 0)
        bottom = top + height + grow
    return left, top, right, bottom


def render_size(
    box: tuple[int, int, int, int], native: tuple[int, int], limit: tuple[int, int], multiple: int = 8
) -> tuple[int, int]:
    """The size a crop is rendered at: the model's native area with the crop's aspect ratio, sides multiples of
    `multiple` (8, or what a traced UNet needs) within [max(64, multiple), limit]."""
    width, height = box[2] - box[0], box[3] - box[1]
    area = native[0] * native[1]
    scaled_width = math.sqrt(area * width / height)
    smallest = max(64, multiple)

    def side(value: float, maximum: int) -> int:
        return int(min(max(round(value / multiple) * multiple, smallest), max(maximum - maximum % multiple, smallest)))

    return side(scaled_width, limit[0]), side(area / scaled_width, limit[1])


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The image with what the mask repaints replaced by the colours around it, smeared from coarse to fine
    (A1111's "fill"): each pass averages the known pixels under a Gaussian and paints the unknown ones with it."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    known = (np.asarray(mask, dtype=np.float64) < 128).astype(np.float64)
    if known.sum() == 0:
        return Image.new("RGB", image.size, (127, 127, 127))
    result = rgb * known[..., None]
    filled = known.copy()
    for radius in (128, 32, 8, 2):
        weights = _gaussian(filled, radius)
        colours = np.stack([_gaussian(result[..., channel], radius) for channel in range(3)], axis=-1)
        average = colours / np.maximum(weights, 1e-6)[..., None]
        paint = (weights > 1e-3) & (known == 0)
        result[paint] = average[paint]
        filled = np.where(paint, 1.0, filled)
    return Image.fromarray(np.clip(result, 0, 255).round().astype(np.uint8), "RGB")


def _gaussian(channel: np.ndarray, radius: int) -> np.ndarray:
    """A near-Gaussian blur of one float channel: three box blurs of half-width `radius` / 2 along each axis,
    zero outside the picture (fill() divides by the blurred weights, so the edges stay unbiased)."""
    half = max(radius // 2, 1)
    blurred_channel = channel.astype(np.float64)
    for axis in (0, 1):
        for _ in range(3):
            blurred_channel = _box(blurred_channel, half, axis)
    return blurred_channel


def _box(values: np.ndarray, half: int, axis: int) -> np.ndarray:
    """The mean over a window of 2 * half + 1 along `axis`, counting pixels beyond the edge as zero."""
    padded = np.pad(values, [(half + 1, half) if a == axis else (0, 0) for a in range(values.ndim)])
    sums = np.cumsum(padded, axis=axis)
    upper = np.take(sums, range(2 * half + 1, sums.shape[axis]), axis=axis)
    lower = np.take(sums, range(0, sums.shape[axis] - 2 * half - 1), axis=axis)
    return np.asarray((upper - lower) / (2 * half + 1), dtype=np.float64)


def noise(image: Image.Image, mask: Image.Image, seed: int) -> Image.Image:
    """The image with what the mask repaints replaced by seeded random pixels (the "latent_noise" start)."""
    rng = np.random.default_rng(seed)
    pixels = np.asarray(image.convert("RGB")).copy()
    repaint = np.asarray(mask) >= 128
    pixels[repaint] = rng.integers(0, 256, size=(int(repaint.sum()), 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def flat(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The image with what the mask repaints made mid grey, what a zero latent decodes to ("latent_nothing")."""
    pixels = np.asarray(image.convert("RGB")).copy()
    pixels[np.asarray(mask) >= 128] = 127
    return Image.fromarray(pixels, "RGB")


def composite(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """`generated` where the (blurred) mask repaints, `original` where it keeps, blended where it is grey: pixels
    the mask keeps fully are exactly the original's."""
    weight = np.asarray(mask, dtype=np.float64)[..., None] / 255.0
    first = np.asarray(original.convert("RGB"), dtype=np.float64)
    second = np.asarray(generated.convert("RGB"), dtype=np.float64)
    blended = np.where(weight == 0, first, first * (1 - weight) + second * weight)
    return Image.fromarray(np.clip(blended, 0, 255).round().astype(np.uint8), "RGB")


def check_mask_size(mask: Image.Image, size: tuple[int, int]) -> None:
    if mask.size != size:
        raise InvalidParameter(
            "mask_image",
            f"mask_image 尺寸 {mask.width}x{mask.height} 与 init_image 的 {size[0]}x{size[1]} 不一致",
        )
