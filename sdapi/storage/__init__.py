"""ImageStorage: where generated images go, and how clients reach them."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol


class ImageStorage(Protocol):
    """Stores encoded images under unguessable keys and turns keys into absolute URLs."""

    name: str

    def prepare(self) -> None:
        """At start-up: check the storage and create what is missing (a bucket). Raise StorageError."""

    def new_key(self, extension: str) -> str:
        """A fresh, unguessable key for an image of this extension (chosen before the upload, so that a run can
        record the keys it is about to write)."""

    def save(self, key: str, data: bytes, content_type: str) -> None:
        """Store one image under `key`. Raise StorageError."""

    def read(self, key: str) -> bytes:
        """The stored bytes of an image (for answers that carry images inline). Raise StorageError."""

    def delete(self, keys: Sequence[str]) -> None:
        """Remove stored images (those of a run whose lease was lost); unknown keys are no error. Raise
        StorageError."""

    def url(self, key: str, base_url: str | None) -> str:
        """The absolute URL a client fetches the image from; `base_url` is the service's own (results.py decides
        it), for storages whose images the service serves itself."""

    def local_path(self, key: str) -> Path | None:
        """The file the service itself serves for `key`, or None (unknown key, or images served elsewhere)."""

    def check(self) -> str:
        """Probe the storage; return "ok" or a short description of what is wrong."""


def new_image_key(extension: str) -> str:
    """An unguessable object name: the seed warns image URLs are public, so they must not be enumerable."""
    return f"{secrets.token_urlsafe(24)}.{extension}"
