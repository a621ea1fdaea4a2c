"""A task's conditioning pictures as the engine takes them: its ControlNet units' (opened from what the task keeps,
preprocessed, fitted to the picture's size by each unit's resize_mode) and its IP-Adapter image prompts'."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageOps

from sdapi.controlnets.preprocess import run_preprocessor
from sdapi.core.params import GenerationParams
from sdapi.media import attachments


def fitted(image: Image.Image, size: tuple[int, int], mode: str) -> Image.Image:
    """`image` at `size`: stretched (resize), covering it with the middle kept (crop), or inside it with black
    bars (fill)."""
    if image.size == size:
        return image
    if mode == "crop":
        return ImageOps.fit(image, size, Image.Resampling.LANCZOS)
    if mode == "fill":
        return ImageOps.pad(image, size, Image.Resampling.LANCZOS, color=(0, 0, 0))
    return image.resize(size, Image.Resampling.LANCZOS)


def _open(raw: bytes) -> Image.Image:
    with Image.open(io.BytesIO(raw), formats=["PNG", "JPEG"]) as opened:
        rgb: Image.Image = opened.convert("RGB")
    return rgb


def control_images(params: GenerationParams, parts: dict[str, bytes], annotators: Path) -> list[Image.Image]:
    """Each unit's preprocessed image at the task's picture size (its first pass's, with a second pass)."""
    mask = None
    if attachments.MASK in parts:
        mask = _open(parts[attachments.MASK]).convert("L")
        if params.inpaint is not None and params.inpaint.invert:
            mask = ImageOps.invert(mask)
    images: list[Image.Image] = []
    for index, unit in enumerate(params.controlnets):
        source = _open(parts[attachments.control(index)])
        made = run_preprocessor(unit.preprocessor, source, dict(unit.preprocessor_options), mask, annotators)
        images.append(fitted(made, (params.width, params.height), unit.resize_mode))
    return images


def image_prompts(params: GenerationParams, parts: dict[str, bytes]) -> list[Image.Image]:
    """Each IP-Adapter image prompt's picture (RGB; the adapter's image processor sizes it)."""
    return [_open(parts[attachments.image_prompt(index)]) for index in range(len(params.ip_adapters))]
