"""The images a task keeps until it ends, as one blob in the init-image store: the init image's bytes as the client
sent them, the inpainting mask (PNG), each control unit's image, each image prompt's. A blob without the prefix is
an init image alone (what tasks stored before there was anything else)."""

from __future__ import annotations

import json
import struct

_PREFIX = b"sdapi-images\x00"
_LENGTH = struct.Struct(">I")
INIT, MASK = "init", "mask"


def control(index: int) -> str:
    """The part name of control unit `index`'s image."""
    return f"control/{index}"


def image_prompt(index: int) -> str:
    """The part name of IP-Adapter image prompt `index`'s image."""
    return f"ip/{index}"


def pack(parts: dict[str, bytes]) -> bytes | None:
    """One blob of named parts (None when there are none); the lone init image is stored as itself."""
    if not parts:
        return None
    if set(parts) == {INIT}:
        return parts[INIT]
    header = json.dumps({name: len(data) for name, data in parts.items()}).encode()
    return _PREFIX + _LENGTH.pack(len(header)) + header + b"".join(parts.values())


def unpack(blob: bytes) -> dict[str, bytes]:
    """The named parts of a stored blob."""
    if not blob.startswith(_PREFIX):
        return {INIT: blob}
    start = len(_PREFIX) + _LENGTH.size
    (length,) = _LENGTH.unpack_from(blob, len(_PREFIX))
    sizes: dict[str, int] = json.loads(blob[start : start + length])
    parts, offset = {}, start + length
    for name, size in sizes.items():
        parts[name] = blob[offset : offset + size]
        offset += size
    return parts
