"""The IP-Adapter library: adapter files (.safetensors, .bin) in ip_adapter.dir, or one folder down, each with the
image encoder in an `image_encoder/` folder beside it, as the published IP-Adapter repositories lay them out
(`models/…`, `sdxl_models/…`). A file's name is its stem; what it is made for is read from its image projection's
shape: the text width it writes into (768 SD 1.x, 1024 SD 2.x, 2048 SDXL; a tiny test model's own)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import msgspec

from sdapi.config import Config
from sdapi.core.addons import AddonKind
from sdapi.errors import InvalidParameter
from sdapi.families.detection import safetensors_keys
from sdapi.models.digests import sha256_file
from sdapi.models.pinned import pinned_path

logger = logging.getLogger(__name__)

SUFFIXES = (".safetensors", ".bin")
ENCODER_FOLDER = "image_encoder"


class IpAdapterEntry(msgspec.Struct, frozen=True):
    """What GET /api/v1/ip-adapters shows of one adapter."""

    name: str
    kind: str | None  # ip-adapter | ip-adapter-plus (a resampler projection); None when unreadable
    cross_attention_dim: int | None
    size_bytes: int
    sha256: str  # first 12 hex digits
    error: str | None = None


class _Scanned(msgspec.Struct, frozen=True):
    entry: IpAdapterEntry
    path: Path
    full_sha256: str


def _shapes(path: Path) -> dict[str, list[int]]:
    if path.suffix == ".safetensors":
        return safetensors_keys(path)
    import torch  # a .bin adapter: read without running code (tensors only)

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    flat: dict[str, list[int]] = {}
    for part, tensors in state.items() if isinstance(state, dict) else []:
        for key, value in tensors.items() if isinstance(tensors, dict) else []:
            flat[f"{part}.{key}"] = list(value.shape)
    return flat


def _scan_file(path: Path) -> _Scanned:
    size, sha = path.stat().st_size, sha256_file(path)
    error, kind, width = None, None, None
    try:
        shapes = _shapes(path)
    except Exception as problem:
        shapes, error = {}, f"无法读取文件（只读取张量）：{problem}"
    if error is None:
        if "image_proj.proj.weight" in shapes:
            kind, width = "ip-adapter", shapes["image_proj.proj.weight"][0] // 4
        elif "image_proj.proj_out.weight" in shapes:
            kind, width = "ip-adapter-plus", shapes["image_proj.proj_out.weight"][0]
        else:
            error = "不是 IP-Adapter 文件（缺少 image_proj.proj / image_proj.proj_out）"
    if error is None and not (path.parent / ENCODER_FOLDER / "config.json").is_file():
        error = f"缺少图像编码器：{path.parent / ENCODER_FOLDER}（CLIPVisionModelWithProjection 目录）"
    entry = IpAdapterEntry(
        name=path.stem, kind=kind, cross_attention_dim=width, size_bytes=size, sha256=sha[:12], error=error
    )
    return _Scanned(entry=entry, path=path, full_sha256=sha)


class IpAdapterLibrary:
    kind = AddonKind(
        name="ip-adapters",
        list_key="ip_adapters",
        config_section="ip_adapter",
        entry_type=IpAdapterEntry,
        summary="IP-Adapter 列表",
        description="ip_adapter.dir 中的 IP-Adapter（旁边需有 image_encoder/ 目录）："
        "名称、类型、文本宽度、大小、sha256、不可用的原因。",
        refresh_summary="重新扫描 IP-Adapter",
    )

    @classmethod
    def from_config(cls, config: Config) -> IpAdapterLibrary:
        return cls(config.ip_adapter_path)

    def listed(self) -> list[IpAdapterEntry]:
        return self.entries()

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files: dict[str, _Scanned] = {}
        self._lock = threading.Lock()

    def scan(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        found: dict[str, _Scanned] = {}
        folders = [
            self.directory,
            *sorted(p for p in self.directory.iterdir() if p.is_dir() and p.name != ENCODER_FOLDER),
        ]
        for folder in folders:
            for suffix in SUFFIXES:
                for path in sorted(folder.glob(f"*{suffix}")):
                    if path.stem in found:
                        continue
                    try:
                        found[path.stem] = _scan_file(path)
                    except OSError as error:
                        logger.warning("IP-Adapter %s unreadable: %s", path.name, error)
        with self._lock:
            self._files = found
        logger.info("IP-Adapter library: %d adapter(s) in %s", len(found), self.directory)

    def entries(self) -> list[IpAdapterEntry]:
        with self._lock:
            return [scanned.entry for scanned in self._files.values()]

    def resolve(self, name: str, text_width: int | None, field: str) -> str:
        """The full sha256 of adapter `name`; raise InvalidParameter naming `field` for an unknown or unusable one,
        or one made for another text width than the request's model."""
        with self._lock:
            scanned = self._files.get(name)
            available = ", ".join(sorted(self._files)) or "（无）"
        if scanned is None:
            raise InvalidParameter(field, f"IP-Adapter 不存在：{name!r}。可用：{available}")
        entry = scanned.entry
        if entry.error is not None:
            raise InvalidParameter(field, f"IP-Adapter {name} 不可用：{entry.error}")
        if text_width is not None and entry.cross_attention_dim != text_width:
            raise InvalidParameter(
                field,
                f"IP-Adapter {name} 不可用：为文本宽度 {entry.cross_attention_dim} 的模型制作，"
                f"所选模型为 {text_width}（SD 1.x 768、SD 2.x 1024、SDXL 2048）",
            )
        return scanned.full_sha256

    def path_for(self, name: str, sha256: str) -> Path:
        """The file of a resolved adapter (sdapi.models.pinned: a rescan for one this process has not seen)."""
        gone = f"IP-Adapter {name} 已被删除或修改（提交后文件内容变化）"
        return pinned_path(lambda: self._lookup(name), self.scan, sha256, "ip_adapters", gone)

    def _lookup(self, name: str) -> _Scanned | None:
        with self._lock:
            return self._files.get(name)
