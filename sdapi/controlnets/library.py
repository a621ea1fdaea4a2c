"""The ControlNet library: the models in controlnet.dir, what each is made for, and resolving a request's units.

A model is a diffusers folder (config.json and its weights, as `ControlNetModel.save_pretrained` writes and hubs
ship) or a single .safetensors file; its name is the folder's name or the file's stem. What it is made for is read
from its config or its tensor names, never by loading it: SDXL's ControlNets take SDXL's size embedding, the
others SD 1.x/2.x's text width. Entries are immutable and swapped in whole under the lock.
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
from sdapi.families import ModelFamily, family_named, family_of_controlnet_class, family_of_unet
from sdapi.families.detection import safetensors_keys
from sdapi.models.digests import sha256_file
from sdapi.models.folders import scan_models
from sdapi.models.pinned import pinned_path

logger = logging.getLogger(__name__)

_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")


class ControlNetEntry(msgspec.Struct, frozen=True):
    """What GET /api/v1/controlnets shows of one model."""

    name: str
    family: str | None  # the family it was made for (sdapi.families); None when unreadable
    layout: str  # folder | single-file
    cross_attention_dim: int | None  # the text width it attends to (768 SD 1.x, 1024 SD 2.x, 2048 SDXL)
    size_bytes: int
    sha256: str  # first 12 hex digits
    error: str | None = None


class _Scanned(msgspec.Struct, frozen=True):
    entry: ControlNetEntry
    path: Path  # the folder, or the single file
    full_sha256: str


def _folder(path: Path) -> _Scanned:
    weights = next((path / name for name in _WEIGHTS if (path / name).is_file()), None)
    size = sum(file.stat().st_size for file in path.iterdir() if file.is_file())
    sha = sha256_file(weights) if weights else ""
    error, family, width = None, None, None
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as problem:
        config, error = {}, f"无法读取 config.json：{problem}"
    if weights is None and error is None:
        error = f"缺少权重文件（{' 或 '.join(_WEIGHTS)}）"
    if error is None:
        # A transformer family's ControlNet by its class (SD3ControlNetModel...); a UNet's by its config.
        transformer_family = family_of_controlnet_class(str(config.get("_class_name", "")))
        family = (transformer_family or family_of_unet(config)).name
        dim = config.get("cross_attention_dim")
        width = dim if isinstance(dim, int) else None
    entry = ControlNetEntry(
        name=path.name,
        family=family,
        layout="folder",
        cross_attention_dim=width,
        size_bytes=size,
        sha256=sha[:12],
        error=error,
    )
    return _Scanned(entry=entry, path=path, full_sha256=sha)


def _single_file(path: Path) -> _Scanned:
    size = path.stat().st_size
    sha = sha256_file(path)
    error, family, width = None, None, None
    try:
        keys = safetensors_keys(path)
    except (OSError, ValueError) as problem:
        keys, error = {}, f"无法读取 safetensors 文件：{problem}"
    if error is None:
        # The text width: an attention block's key projection reads it (diffusers' or the original names).
        width = next((shape[1] for key, shape in keys.items() if key.endswith("attn2.to_k.weight")), None)
        # A UNet that takes the pooled text and size embedding (diffusers' or the original names) is a two-encoder
        # family's; otherwise the text width tells.
        pooled = any(key.startswith(("add_embedding.", "control_model.label_emb.")) for key in keys)
        family = family_of_unet({"cross_attention_dim": width}, pooled_text=pooled).name
        if not any(key.startswith(("controlnet_cond_embedding.", "control_model.input_hint_block.")) for key in keys):
            error = "不是 ControlNet 模型（缺少 controlnet_cond_embedding / input_hint_block）"
    entry = ControlNetEntry(
        name=path.stem,
        family=family,
        layout="single-file",
        cross_attention_dim=width,
        size_bytes=size,
        sha256=sha[:12],
        error=error,
    )
    return _Scanned(entry=entry, path=path, full_sha256=sha)


def family_mismatch(entry: ControlNetEntry, model: ModelFamily, text_width: int | None) -> str | None:
    """Why `entry` cannot run beside a model of `model`'s family whose UNet attends to `text_width`, or None."""
    if entry.error is not None:
        return entry.error
    mismatch = model.family.addon_mismatch(None if entry.family is None else family_named(entry.family))
    if mismatch is not None:
        return mismatch
    if text_width is not None and entry.cross_attention_dim is not None and entry.cross_attention_dim != text_width:
        return (
            f"文本宽度 {entry.cross_attention_dim} 与所选模型的 {text_width} 不符"
            "（SD 1.x 与 SD 2.x 的 ControlNet 不通用）"
        )
    return None


class ControlNetLibrary:
    kind = AddonKind(
        name="controlnets",
        list_key="controlnets",
        config_section="controlnet",
        entry_type=ControlNetEntry,
        summary="ControlNet 列表",
        description="controlnet.dir 中的模型（diffusers 目录或单个 .safetensors）：名称、"
        "家族（sd1、sd2、sdxl、sd3、flux、z-image，与 /api/v1/models 相同）、文本宽度、大小、sha256、不可用的原因。",
        refresh_summary="重新扫描 ControlNet",
    )

    @classmethod
    def from_config(cls, config: Config) -> ControlNetLibrary:
        return cls(config.controlnet_path)

    def listed(self) -> list[ControlNetEntry]:
        return self.entries()

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._files: dict[str, _Scanned] = {}
        self._lock = threading.Lock()

    def scan(self) -> None:
        """Read every model in the folder; an unusable one becomes an entry with an error, never an exception."""
        found = scan_models(self.directory, _folder, _single_file, "ControlNet")
        with self._lock:
            self._files = found
        logger.info("ControlNet library: %d model(s) in %s", len(found), self.directory)

    def entries(self) -> list[ControlNetEntry]:
        with self._lock:
            return [scanned.entry for scanned in self._files.values()]

    def resolve(self, name: str, model: ModelFamily, text_width: int | None, field: str) -> tuple[ControlNetEntry, str]:
        """The entry of ControlNet `name` and its full sha256; raise InvalidParameter naming `field` for an unknown
        one or one that cannot run on the request's model."""
        with self._lock:
            scanned = self._files.get(name)
            available = ", ".join(sorted(self._files)) or "（无）"
        if scanned is None:
            raise InvalidParameter(field, f"ControlNet 不存在：{name!r}。可用：{available}")
        problem = family_mismatch(scanned.entry, model, text_width)
        if problem is not None:
            raise InvalidParameter(field, f"ControlNet {name} 不可用：{problem}")
        return scanned.entry, scanned.full_sha256

    def path_for(self, name: str, sha256: str) -> Path:
        """The folder or file of a resolved model; a name this process has not seen rescans the folder first.
        Raise InvalidParameter when it is gone or changed since submit."""
        gone = f"ControlNet {name} 已被删除或修改（提交后文件内容变化）"
        return pinned_path(lambda: self._lookup(name), self.scan, sha256, "controlnets", gone)

    def _lookup(self, name: str) -> _Scanned | None:
        with self._lock:
            return self._files.get(name)
