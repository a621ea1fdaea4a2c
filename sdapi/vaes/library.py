"""The VAE library: the VAEs in vae.dir that a request may run instead of its model's own (A1111's sd_vae).

A VAE is a diffusers folder (config.json and its weights, as `AutoencoderKL.save_pretrained` writes them) or a
single .safetensors file of diffusers' tensor names; its name is the folder's name or the file's stem. What it fits
is its latent channel count (4: SD 1.x, 2.x and SDXL; 16: SD 3.x, FLUX.1, Z-Image; 32: FLUX.2), read from its config
or its decoder's first convolution, never by loading it. A single file in the original (ldm) layout is listed with
an error naming the conversion. Entries are immutable and swapped in whole under the lock.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import msgspec

from sdapi.config import Config
from sdapi.core.addons import AddonKind
from sdapi.errors import InvalidParameter
from sdapi.families import ModelFamily
from sdapi.families.detection import safetensors_keys
from sdapi.models.digests import sha256_file
from sdapi.models.folders import scan_models
from sdapi.models.pinned import pinned_path

logger = logging.getLogger(__name__)

_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
# The decoder's first convolution, by diffusers' names: its input channels are the latent channels.
_DECODER_IN = "decoder.conv_in.weight"


class VaeEntry(msgspec.Struct, frozen=True):
    """What GET /api/v1/vaes shows of one VAE."""

    name: str
    latent_channels: int | None  # 4: SD 1.x/2.x/SDXL; 16: SD 3.x/FLUX.1/Z-Image; 32: FLUX.2; None when unreadable
    layout: str  # folder | single-file
    size_bytes: int
    sha256: str  # first 12 hex digits
    scaling_factor: float | None = None  # its own (a folder's config); None: the model's
    error: str | None = None


class _Scanned(msgspec.Struct, frozen=True):
    entry: VaeEntry
    path: Path
    full_sha256: str


def _folder(path: Path) -> _Scanned:
    weights = next((path / name for name in _WEIGHTS if (path / name).is_file()), None)
    size = sum(file.stat().st_size for file in path.iterdir() if file.is_file())
    sha = sha256_file(weights) if weights else ""
    error, channels, scaling = None, None, None
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        channels = config.get("latent_channels")
        scaling = config.get("scaling_factor")
        if config.get("_class_name") not in ("AutoencoderKL", None):
            error = f"不是 AutoencoderKL（{config.get('_class_name')}）"
    except (OSError, ValueError) as problem:
        error = f"无法读取 config.json：{problem}"
    if weights is None and error is None:
        error = f"缺少权重文件（{' 或 '.join(_WEIGHTS)}）"
    entry = VaeEntry(
        name=path.name,
        latent_channels=channels if isinstance(channels, int) else None,
        layout="folder",
        size_bytes=size,
        sha256=sha[:12],
        scaling_factor=float(scaling) if isinstance(scaling, int | float) else None,
        error=error,
    )
    return _Scanned(entry=entry, path=path, full_sha256=sha)


def _single_file(path: Path) -> _Scanned:
    size = path.stat().st_size
    sha = sha256_file(path)
    error, channels = None, None
    try:
        keys = safetensors_keys(path)
    except (OSError, ValueError) as problem:
        keys, error = {}, f"无法读取 safetensors 文件：{problem}"
    if error is None:
        if _DECODER_IN in keys:
            channels = keys[_DECODER_IN][1]
        elif any(key.startswith(("encoder.down.", "first_stage_model.")) for key in keys):
            error = "原始（ldm）格式的单文件 VAE 尚不支持：请用 diffusers 的 AutoencoderKL.from_single_file "
            error += "转换为文件夹"
        else:
            error = f"不是 VAE（缺少 {_DECODER_IN}）"
    entry = VaeEntry(
        name=path.stem, latent_channels=channels, layout="single-file", size_bytes=size, sha256=sha[:12], error=error
    )
    return _Scanned(entry=entry, path=path, full_sha256=sha)


class VaeLibrary:
    kind = AddonKind(
        name="vaes",
        list_key="vaes",
        config_section="vae",
        entry_type=VaeEntry,
        summary="VAE 列表",
        description="vae.dir 中的 VAE（diffusers 目录，或 diffusers 张量名的单个 .safetensors）：名称、潜空间通道数"
        "（4：SD 1.x/2.x/SDXL；16：SD 3.x/FLUX.1/Z-Image）、大小、sha256、不可用的原因。请求的 vae 字段按名称使用。",
        refresh_summary="重新扫描 VAE",
    )

    @classmethod
    def from_config(cls, config: Config) -> VaeLibrary:
        return cls(config.vae_path)

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files: dict[str, _Scanned] = {}
        self._lock = threading.Lock()

    def listed(self) -> list[VaeEntry]:
        with self._lock:
            return [scanned.entry for scanned in self._files.values()]

    def scan(self) -> None:
        """Read every VAE in the folder; an unusable one becomes an entry with an error, never an exception."""
        found = scan_models(self.directory, _folder, _single_file, "VAE")
        with self._lock:
            self._files = found
        logger.info("VAE library: %d VAE(s) in %s", len(found), self.directory)

    def resolve(self, name: str, model: ModelFamily) -> tuple[VaeEntry, str]:
        """The entry of VAE `name` and its full sha256; raise InvalidParameter naming `vae` for an unknown one or
        one whose latents are not the model's."""
        with self._lock:
            scanned = self._files.get(name)
            available = ", ".join(sorted(self._files)) or "（无）"
        if scanned is None:
            self.scan()  # added since the last scan (perhaps through another node)
            with self._lock:
                scanned = self._files.get(name)
        if scanned is None:
            raise InvalidParameter("vae", f"VAE 不存在：{name!r}。可用：{available}")
        entry = scanned.entry
        if entry.error is not None:
            raise InvalidParameter("vae", f"VAE {name} 不可用：{entry.error}")
        wanted = model.family.latent_channels
        if entry.latent_channels != wanted:
            channels = f"VAE {name} 的潜空间有 {entry.latent_channels} 个通道"
            raise InvalidParameter("vae", f"{channels}，所选模型（{model.family.label}）需要 {wanted} 个")
        return entry, scanned.full_sha256

    def path_for(self, name: str, sha256: str) -> Path:
        """The folder or file of a resolved VAE; raise InvalidParameter when it is gone or changed since submit."""
        gone = f"VAE {name} 已被删除或修改（提交后文件内容变化）"
        return pinned_path(lambda: self._lookup(name), self.scan, sha256, "vae", gone)

    def _lookup(self, name: str) -> _Scanned | None:
        with self._lock:
            return self._files.get(name)
