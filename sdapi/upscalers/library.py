"""The upscaler library: the neural upscaler files in upscalers.dir and what each is, beside the built-in
upscalers of the high-resolution pass. Entries are swapped in whole under the lock, as in the LoRA library."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import msgspec

from sdapi.config import Config
from sdapi.core.addons import AddonKind
from sdapi.core.request import LATENT_UPSCALERS, PIXEL_UPSCALERS
from sdapi.errors import InvalidParameter
from sdapi.models.digests import sha256_file

logger = logging.getLogger(__name__)

SUFFIXES = (".safetensors", ".pth")


class UpscalerEntry(msgspec.Struct, frozen=True):
    """What GET /api/v1/upscalers shows of one upscaler."""

    name: str
    kind: str  # latent | pixel | neural
    scale: float | None = None  # a neural upscaler's own factor
    size_bytes: int | None = None
    sha256: str | None = None  # first 12 hex digits
    error: str | None = None  # why the file cannot be used


BUILT_IN = [UpscalerEntry(name=name, kind="latent") for name in LATENT_UPSCALERS] + [
    UpscalerEntry(name=name, kind="pixel") for name in PIXEL_UPSCALERS
]


def _scan_file(path: Path, max_bytes: int) -> UpscalerEntry:
    size = path.stat().st_size
    entry = UpscalerEntry(name=path.stem, kind="neural", size_bytes=size, sha256=sha256_file(path)[:12])
    if size > max_bytes:
        error = f"文件大小 {size / 2**20:.1f} MB，超过 upscalers.max_file_mb（{max_bytes / 2**20:.0f} MB）"
        return msgspec.structs.replace(entry, error=error)
    # rrdb.py reads tensors with torch: imported when there is a file to read.
    from sdapi.upscalers.rrdb import UpscalerFileError, load_rrdb

    try:
        network = load_rrdb(path)
    except UpscalerFileError as problem:
        return msgspec.structs.replace(entry, error=str(problem))
    return msgspec.structs.replace(entry, scale=network.scale)


class UpscalerLibrary:
    kind = AddonKind(
        name="upscalers",
        list_key="upscalers",
        config_section="upscalers",
        entry_type=UpscalerEntry,
        summary="放大方法列表",
        description="hires.upscaler 可用的放大方法：latent（潜空间插值）、pixel（像素插值）与 upscalers.dir 中的"
        "神经网络放大模型（ESRGAN/Real-ESRGAN 的 .pth/.safetensors），附放大倍数、大小、sha256。",
        refresh_summary="重新扫描放大模型",
    )

    @classmethod
    def from_config(cls, config: Config) -> UpscalerLibrary:
        return cls(config.upscalers_path, config.upscalers.max_file_mb)

    def listed(self) -> list[UpscalerEntry]:
        return self.entries()

    def __init__(self, directory: Path, max_file_mb: float) -> None:
        self.directory = directory
        self._max_bytes = int(max_file_mb * 2**20)
        self._files: dict[str, tuple[UpscalerEntry, Path]] = {}
        self._lock = threading.Lock()

    def scan(self) -> None:
        """Read every upscaler file in the folder; a bad file becomes an entry with an error, never an exception."""
        self.directory.mkdir(parents=True, exist_ok=True)
        files: dict[str, tuple[UpscalerEntry, Path]] = {}
        for suffix in SUFFIXES:
            for path in sorted(self.directory.glob(f"*{suffix}")):
                if path.stem in files or path.stem in LATENT_UPSCALERS or path.stem in PIXEL_UPSCALERS:
                    continue
                try:
                    files[path.stem] = (_scan_file(path, self._max_bytes), path)
                except OSError as error:
                    logger.warning("upscaler %s unreadable: %s", path.name, error)
        with self._lock:
            self._files = files
        logger.info("upscaler library: %d file(s) in %s", len(files), self.directory)

    def entries(self) -> list[UpscalerEntry]:
        """The built-in upscalers, then every file by name."""
        with self._lock:
            files = sorted(self._files.values(), key=lambda item: item[0].name.lower())
        return [*BUILT_IN, *(entry for entry, _ in files)]

    def usable(self) -> list[str]:
        """The names of the neural upscalers a request may name."""
        with self._lock:
            return sorted(name for name, (entry, _) in self._files.items() if entry.error is None)

    def path_for(self, name: str) -> Path:
        """The file of neural upscaler `name`; a name this process has not seen rescans the folder first."""
        with self._lock:
            found = self._files.get(name)
        if found is None:
            self.scan()
            with self._lock:
                found = self._files.get(name)
        if found is None or found[0].error is not None:
            raise InvalidParameter("hires", f"放大模型 {name} 不存在或不可用")
        return found[1]
