"""Decoding the init_image data URL and encoding output images. Pure: bytes in, bytes or PIL out."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image

from sdapi.core.params import InitImageInfo
from sdapi.errors import InvalidParameter
from sdapi.media.provenance import ImageRecord, encode_with_record

_DATA_URL = re.compile(r"^data:image/(png|jpeg|jpg);base64,", re.IGNORECASE)
_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg"}
CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg"}
JPEG_QUALITY = 95


def decode_init_image(data_url: str, max_pixels: int) -> tuple[bytes, InitImageInfo]:
    """Check an init_image data URL and return its raw bytes and size; raise InvalidParameter."""
    match = _DATA_URL.match(data_url)
    if match is None:
        raise InvalidParameter(
            "init_image",
            "init_image 格式错误：必须以 data:image/png;base64, 或 data:image/jpeg;base64, 开头",
        )
    payload = data_url[match.end() :]
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameter("init_image", "init_image 不是有效的 base64 编码") from None
    if not raw:
        raise InvalidParameter("init_image", "init_image 为空")
    try:
        # Pillow warns (and past twice the limit, raises) on decompression bombs; we check the size ourselves
        # from the header before decoding any pixels.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as image:
                image_format = _PIL_FORMATS.get(image.format or "")
                width, height = image.size
                if image_format is None:
                    raise InvalidParameter("init_image", f"init_image 图片格式不支持：{image.format}。支持：PNG、JPEG")
                if width * height > max_pixels:
                    raise InvalidParameter(
                        "init_image",
                        f"init_image 太大：{width}x{height} 像素，超过上限 {max_pixels} 像素",
                    )
                image.load()
    except InvalidParameter:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise InvalidParameter("init_image", "init_image 无法解码为 PNG 或 JPEG 图片") from None
    return raw, InitImageInfo(width=width, height=height, format=image_format)


def open_init_image(raw: bytes, info: InitImageInfo, width: int, height: int) -> Image.Image:
    """Open stored init image bytes as RGB, cropped to the output size (multiples of 8, top-left anchored).

    Only the format checked at submit is tried, so the bytes cannot decode as anything else later.
    """
    with Image.open(io.BytesIO(raw), formats=[info.format.upper()]) as image:
        rgb: Image.Image = image.convert("RGB")
    if rgb.size != (width, height):
        rgb = rgb.crop((0, 0, width, height))
    return rgb


def encode_image(image: Image.Image, output_format: str, record: ImageRecord | None = None) -> bytes:
    """Encode a generated image as PNG or JPEG bytes, with its generation record embedded when given."""
    return encode_with_record(image, "png" if output_format == "png" else "jpeg", JPEG_QUALITY, record)
