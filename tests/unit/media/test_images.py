"""Init images decoded within the limits, results encoded in every output format."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from sdapi.errors import InvalidParameter
from sdapi.media.images import decode_init_image, encode_image


def _png(width, height, image_format="PNG"):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, format=image_format)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("prefix", "image_format", "expected"),
    [
        ("data:image/png;base64,", "PNG", "png"),
        ("data:image/jpeg;base64,", "JPEG", "jpeg"),
        ("data:image/jpg;base64,", "JPEG", "jpeg"),
        ("DATA:IMAGE/PNG;BASE64,", "PNG", "png"),
    ],
)
def test_decode_init_image_accepts_png_and_jpeg(prefix, image_format, expected):
    raw = _png(70, 90, image_format)
    decoded, info = decode_init_image(prefix + base64.b64encode(raw).decode(), max_pixels=10_000)
    assert decoded == raw and (info.width, info.height, info.format) == (70, 90, expected)


def test_decode_init_image_enforces_the_pixel_limit():
    with pytest.raises(InvalidParameter):
        decode_init_image("data:image/png;base64," + base64.b64encode(_png(101, 100)).decode(), max_pixels=10_000)


@pytest.mark.parametrize("output_format", ["png", "jpg", "jpeg"])
def test_encode_image(output_format):
    data = encode_image(Image.new("RGB", (16, 8)), output_format)
    assert Image.open(io.BytesIO(data)).format == ("PNG" if output_format == "png" else "JPEG")
