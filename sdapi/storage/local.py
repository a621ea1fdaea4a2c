"""Local image storage: files under data_dir/images, served by the service itself at /images/{key}."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sdapi.errors import StorageError
from sdapi.storage import new_image_key

IMAGE_ROUTE = "/images"
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}\.(png|jpg|jpeg|webp)$")


class LocalImageStorage:
    """ImageStorage on the local disk."""

    name = "local"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def prepare(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(f"cannot create image folder {self.directory}: {error.strerror}") from None

    def new_key(self, extension: str) -> str:
        return new_image_key(extension)

    def save(self, key: str, data: bytes, content_type: str) -> None:
        try:
            # Write to a temporary name and rename, so a reader never sees half an image.
            handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".incoming-")
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, self.directory / key)
        except OSError as error:
            raise StorageError(f"本地图片存储写入失败：{error.strerror}") from None

    def read(self, key: str) -> bytes:
        path = self.local_path(key)
        if path is None:
            raise StorageError(f"本地图片不存在：{key}")
        try:
            return path.read_bytes()
        except OSError as error:
            raise StorageError(f"本地图片读取失败：{error.strerror}") from None

    def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            path = self.local_path(key)
            if path is None:
                continue
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                raise StorageError(f"本地图片删除失败：{error.strerror}") from None

    def url(self, key: str, base_url: str | None) -> str:
        return f"{base_url or ''}{IMAGE_ROUTE}/{key}"

    def local_path(self, key: str) -> Path | None:
        """The file behind a key, or None when the key is malformed or unknown (never a path outside the folder)."""
        if not _KEY_PATTERN.match(key):
            return None
        path = self.directory / key
        return path if path.is_file() else None

    def check(self) -> str:
        if os.access(self.directory, os.W_OK):
            return "ok"
        return f"image folder {self.directory} is not writable"
