"""Decoding client images within the limits and encoding output images. Pure: bytes in, bytes or PIL out.

Every image a client sends (the native init_image, OpenAI's and A1111's init images, A1111's png-info) is opened
through `open_image`, which reads the header only and refuses other formats and more than the configured pixels
before a single pixel is decoded."""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import re
import warnings
from collections.abc import Iterator

from PIL import Image, ImageOps

from sdapi.core.params import GenerationParams, InitImageInfo
from sdapi.errors import InvalidParameter
from sdapi.media import attachments
from sdapi.media.masks import check_mask_size, encode_mask, mask_from_image, outpaint_canvas
from sdapi.media.provenance import ImageRecord, encode_with_record

_DATA_URL = re.compile(r"^data:image/(png|jpeg|jpg|webp);base64,", re.IGNORECASE)
_PIL_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}
LOSSY_QUALITY = 95  # JPEG and WebP, unless the request's output_compression says otherwise


@contextlib.contextmanager
def open_image(raw: bytes, max_pixels: int, field: str) -> Iterator[Image.Image]:
    """The PNG, JPEG or WebP in `raw`, opened lazily (only its header is read here); raise InvalidParameter naming
    `field` for another format, an undecodable file, or more than `max_pixels` pixels, before any pixel is decoded."""
    try:
        # Pillow warns (and past twice its own limit, raises) on decompression bombs; the size is checked here, from
        # the header, against the configured limit instead.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=list(_PIL_FORMATS))
    except Image.DecompressionBombError:
        raise InvalidParameter(field, f"{field} 太大：超过上限 {max_pixels} 像素") from None
    except (OSError, SyntaxError, ValueError):
        raise InvalidParameter(field, f"{field} 无法解码为 PNG、JPEG 或 WebP 图片") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise InvalidParameter(field, f"{field} 太大：{width}x{height} 像素，超过上限 {max_pixels} 像素")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                yield image
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            # Decoding the pixels failed (a truncated or corrupt file behind a valid header).
            raise InvalidParameter(field, f"{field} 无法解码为 PNG、JPEG 或 WebP 图片") from None


def _data_url_bytes(data_url: str, field: str) -> bytes:
    """The bytes of a PNG, JPEG or WebP data URL; raise InvalidParameter naming `field`."""
    match = _DATA_URL.match(data_url)
    if match is None:
        raise InvalidParameter(
            field,
            f"{field} 格式错误：必须以 data:image/png;base64,、data:image/jpeg;base64, 或 data:image/webp;base64, 开头",
        )
    payload = data_url[match.end() :]
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameter(field, f"{field} 不是有效的 base64 编码") from None
    if not raw:
        raise InvalidParameter(field, f"{field} 为空")
    return raw


def decode_mask_image(data_url: str, max_pixels: int, size: tuple[int, int]) -> bytes:
    """Check a mask_image data URL against the init image's `size` and return the mask as PNG bytes (greyscale:
    alpha where it has transparency, else luminance); raise InvalidParameter naming mask_image."""
    with open_image(_data_url_bytes(data_url, "mask_image"), max_pixels, "mask_image") as image:
        check_mask_size(image, size)
        mask = mask_from_image(image)
    return encode_mask(mask)


def decode_init_image(data_url: str, max_pixels: int, field: str = "init_image") -> tuple[bytes, InitImageInfo]:
    """Check an init_image data URL (or another image field's, named `field`) and return its raw bytes and size;
    raise InvalidParameter naming the field."""
    raw = _data_url_bytes(data_url, field)
    with open_image(raw, max_pixels, field) as image:
        image_format = _PIL_FORMATS[image.format or ""]
        width, height = image.size
        image.load()
    return raw, InitImageInfo(width=width, height=height, format=image_format)


def open_init_image(raw: bytes, info: InitImageInfo, width: int, height: int) -> Image.Image:
    """Open stored init image bytes as RGB, cropped to the output size (multiples of 8, top-left anchored).

    Only the format checked at submit is tried, so the bytes cannot decode as anything else later.
    """
    rgb = _open_rgb(raw, info)
    if rgb.size != (width, height):
        rgb = rgb.crop((0, 0, width, height))
    return rgb


def _open_rgb(raw: bytes, info: InitImageInfo) -> Image.Image:
    with Image.open(io.BytesIO(raw), formats=[info.format.upper()]) as image:
        rgb: Image.Image = image.convert("RGB")
    return rgb


def open_edit_images(parts: dict[str, bytes], params: GenerationParams) -> Image.Image:
    """An inpainting or outpainting task's stored init image and mask, on the output's canvas: RGBA, whose alpha is
    the mask (255 repaints), inverted as asked, not yet blurred. The engines read inpainting masks this way."""
    assert params.init_image is not None and params.inpaint is not None
    image = _open_rgb(parts[attachments.INIT], params.init_image)
    mask = None
    if attachments.MASK in parts:
        with Image.open(io.BytesIO(parts[attachments.MASK]), formats=["PNG"]) as stored:
            mask = stored.convert("L")
    settings = params.inpaint
    if mask is not None and settings.invert:
        mask = ImageOps.invert(mask)
    if mask is None:
        mask = Image.new("L", image.size, 0)
    if settings.outpaints:
        left, top, right, bottom = settings.outpaint
        image, mask = outpaint_canvas(image, mask, left, top, right, bottom)
    box = (0, 0, params.width, params.height)
    edit = image.crop(box).convert("RGBA")
    edit.putalpha(mask.crop(box))
    return edit


def encode_image(
    image: Image.Image, output_format: str, record: ImageRecord | None = None, quality: int | None = None
) -> bytes:
    """Encode a generated image as PNG, JPEG or WebP bytes (`quality` for the lossy two, LOSSY_QUALITY when None),
    with its generation record embedded when given."""
    encoding = {"png": "png", "webp": "webp"}.get(output_format, "jpeg")
    return encode_with_record(image, encoding, LOSSY_QUALITY if quality is None else quality, record)
