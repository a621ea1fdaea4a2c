"""One small parser per field kind the dialects must read by hand (OpenAI's `size`, multipart text fields and their
numbers): each returns a typed value or raises InvalidParameter naming the field, in the dialect's error shape, so
no int(), float(), .decode() or hash of client data can raise anywhere else. Everything else a dialect reads is
decoded by msgspec into typed Structs."""

from __future__ import annotations

import base64
import binascii
import codecs
import math
import re
from collections.abc import Mapping

import multipart
from litestar.datastructures import UploadFile

from sdapi.errors import InvalidParameter

# ASCII digits only ("²" is a digit to str.isdigit, not to int), and no more than a side can have.
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})", re.ASCII)
_NUMBER = re.compile(r"[+-]?(?:[0-9]{1,10}(?:\.[0-9]{0,10})?|\.[0-9]{1,10})(?:[eE][+-]?[0-9]{1,3})?", re.ASCII)


def size(value: str | None) -> tuple[int | None, int | None]:
    """OpenAI's `size`: "WIDTHxHEIGHT", or "auto"/None for the configured default."""
    if value is None or value == "auto":
        return None, None
    found = _SIZE.fullmatch(value)
    if found is None:
        shown = value if len(value) <= 40 else value[:40] + "…"
        raise InvalidParameter("size", f"size 无效：{shown!r}。格式为 宽x高，例如 512x512，或 auto")
    return int(found[1]), int(found[2])


def form_text(form: Mapping[str, object], name: str) -> str | None:
    """A multipart field that must be sent once, as text (None when absent)."""
    value = form.get(name)
    if value is None:
        return None
    if isinstance(value, list):
        raise InvalidParameter(name, f"{name} 只能发送一次")
    if isinstance(value, UploadFile) or not isinstance(value, str):
        raise InvalidParameter(name, f"{name} 必须是文本字段，不能是文件")
    return value


def form_number(form: Mapping[str, object], name: str) -> float | None:
    """A multipart field holding one finite decimal number (None when absent)."""
    text = form_text(form, name)
    if text is None:
        return None
    if _NUMBER.fullmatch(text.strip()) is None or not math.isfinite(number := float(text)):
        shown = text if len(text) <= 40 else text[:40] + "…"
        raise InvalidParameter(name, f"{name} 不是有效的数字：{shown!r}")
    return number


def check_form_text(body: bytes, content_type: str) -> None:
    """Refuse (400, naming the part) a multipart body whose text parts do not decode with the charset they declare,
    before the framework decodes them (which raises LookupError or UnicodeDecodeError, a 500). Parsed with the same
    `multipart` parser the framework uses."""
    kind, options = multipart.parse_options_header(content_type)
    boundary = options.get("boundary")
    if kind != "multipart/form-data" or not boundary:
        return  # not a form: the framework refuses it with its own 400
    try:
        with multipart.PushMultipartParser(boundary.encode("latin-1")) as parser:
            segment: multipart.MultipartSegment | None = None
            text = bytearray()
            chunk = body
            while not parser.closed:
                for part in parser.parse(chunk):
                    if isinstance(part, multipart.MultipartSegment):
                        segment, text = part, bytearray()
                    elif part:
                        if segment is not None and not segment.filename:
                            text.extend(part)
                    elif segment is not None and not segment.filename:
                        _check_text(segment.name, bytes(text), segment.charset or "utf-8")
                chunk = b""
    except multipart.MultipartError as error:
        raise InvalidParameter("body", f"multipart/form-data 格式错误：{error}") from None


def _check_text(name: str, raw: bytes, charset: str) -> None:
    try:
        codecs.lookup(charset)
    except LookupError:
        raise InvalidParameter(name, f"{name} 的字符集不支持：{charset[:40]!r}（请用 utf-8）") from None
    try:
        raw.decode(charset)
    except UnicodeDecodeError:
        raise InvalidParameter(name, f"{name} 不是有效的 {charset[:40]} 文本") from None


def decoded(encoded: object, field: str) -> bytes:
    """The bytes of an A1111 base64 image (with or without a data-URL prefix); raise InvalidParameter naming
    `field`."""
    if not isinstance(encoded, str) or not encoded:
        raise InvalidParameter(field, f"{field} 缺少 base64 图片")
    payload = encoded.split(",", 1)[1] if encoded.startswith("data:") else encoded
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameter(field, f"{field} 不是有效的 base64 PNG/JPEG 图片") from None
