"""A preview picture as bytes: JPEG or WebP (previews.format) at previews.quality, run off the generation thread."""

from __future__ import annotations

import base64
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


def reencoded_base64(preview: Preview, image_format: str) -> str:
    """The preview's picture as base64 (no data: prefix) in `image_format` (png, jpeg or webp), for the dialects
    that send it in the format their client asked for."""
    with Image.open(io.BytesIO(preview.data)) as picture:
        buffer = io.BytesIO()
        picture.convert("RGB").save(buffer, format=image_format.upper())
    return base64.b64encode(buffer.getvalue()).decode("ascii")
