"""Which image format bytes hold, from their first bytes alone (no decoder): for data URLs made from uploads."""

from __future__ import annotations

import base64


def image_mime(raw: bytes) -> str:
    """The image subtype of `raw` for a data URL: "jpeg", "webp", or "png" for anything else (the decoder that
    later opens it refuses what is no PNG)."""
    if raw[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "webp"
    return "png"


def base64_image_mime(encoded: str) -> str:
    """image_mime of base64 text, read from its first 16 characters (12 bytes)."""
    try:
        head = base64.b64decode(encoded[:16] + "=" * (-len(encoded[:16]) % 4))
    except ValueError:
        return "png"
    return image_mime(head)
