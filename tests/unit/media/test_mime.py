"""Upload bytes are named by what they are (the data URLs the dialects build from them say so)."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from sdapi.media.mime import base64_image_mime, image_mime


@pytest.mark.parametrize(("pil_format", "mime"), [("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp")])
def test_each_format_is_named_from_its_first_bytes(pil_format, mime):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "orange").save(buffer, format=pil_format)
    raw = buffer.getvalue()
    assert image_mime(raw) == mime
    assert base64_image_mime(base64.b64encode(raw).decode("ascii")) == mime


def test_what_is_no_known_image_is_left_to_the_decoder_as_png():
    assert image_mime(b"GIF89a....") == "png"
    assert base64_image_mime("not base64 at all!") == "png"
