"""A preview picture as bytes: JPEG or WebP (previews.format) at previews.quality, run off the generation thread."""

from __future__ import annotations

import io

from PIL import Image

from sdapi.previews import Preview

MIME_TYPES = {"jpeg": "image/jpeg", "webp": "image/webp", "png": "image/png"}


def encode_preview(picture: Image.Image, step: int, total_steps: int, image_format: str, quality: int) -> Preview:
    buffer = io.BytesIO()
    if image_format == "png":
        picture.save(buffer, format="PNG")
    else:
        picture.save(buffer, format=image_format.upper(), quality=quality)
    return Preview(
        step=step,
        total_steps=total_steps,
        width=picture.width,
        height=picture.height,
        mime=MIME_TYPES[image_format],
        data=buffer.getvalue(),
    )
