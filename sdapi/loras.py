"""The LoRA library: the files in loras.dir, what each is, whether it fits the model, and request resolution."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated

import msgspec

from sdapi.config import LorasConfig
from sdapi.errors import InvalidParameter

logger = logging.getLogger(__name__)

MAX_WEIGHT = 2.0


class LoraRequest(msgspec.Struct, forbid_unknown_fields=True):
    """One entry of a request's `loras` list."""

    name: Annotated[str, msgspec.Meta(min_length=1, description="LoRA 名称（loras.dir 中的文件名，不含扩展名）")]
    weight: Annotated[float, msgspec.Meta(ge=-MAX_WEIGHT, le=MAX_WEIGHT, description="权重，范围 -2 到 2")] = 1.0


class LoraSpec(msgspec.Struct, frozen=True):
    """A resolved LoRA of a task: the file's content hash pins exactly what was validated and will be applied."""

    name: str
    weight: float
    sha256: str


class LoraEntry(msgspec.Struct):
    """What GET /api/v1/loras shows of one file."""

    name: str
    type: str | None  # lora | loha | lokr; None when the file could not be read
    parts: list[str]  # unet, text_encoder
    size_bytes: int
    sha256: str  # first 12 hex digits
    fits: bool | None  # None until the model is loaded
    error: str | None  # why the file cannot be used
    modules: int = 0


class _Scanned(msgspec.Struct):
    entry: LoraEntry
    path: Path
    full_sha256: str
    module_names: list[str] = []
    # Why the file itself is unusable (too large, corrupt, unknown keys, NaN); fit problems are decided later.
    read_error: str | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_adapter_file(path: Path) -> dict[str, object]:
    """All tensors of a .safetensors file (CPU); raise AdapterFileError for a corrupt or non-finite file."""
    import torch
    from safetensors.torch import load_file

    from sdapi.engines.adapter_files import AdapterFileError

    try:
        tensors: dict[str, torch.Tensor] = load_file(str(path))
    except Exception as error:  # safetensors raises SafetensorError, OSError, ValueError...
        raise AdapterFileError(f"cannot read file: {type(error).__name__}: {error}") from None
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise AdapterFileError(f"tensor {key} contains NaN or infinite values")
    return dict(tensors)


def _scan_file(path: Path, max_bytes: int) -> _Scanned:
    from sdapi.engines.adapter_files import AdapterFileError, file_kind, group_factors, part_of

    size = path.stat().st_size
    sha = _sha256(path)
    entry = LoraEntry(name=path.stem, type=None, parts=[], size_bytes=size, sha256=sha[:12], fits=None, error=None)
    scanned = _Scanned(entry=entry, path=path, full_sha256=sha)
    if size > max_bytes:
        scanned.read_error = f"file is {size / 2**20:.1f} MB, over loras.max_file_mb ({max_bytes / 2**20:.0f} MB)"
    else:
        try:
            modules = group_factors(read_adapter_file(path))
        except AdapterFileError as error:
            scanned.read_error = str(error)
        else:
            entry.type = file_kind(modules)
            entry.parts = sorted({part_of(key) for key in modules})
            entry.modules = len(modules)
            scanned.module_names = list(modules)
    if scanned.read_error is not None:
        entry.fits, entry.error = False, scanned.read_error
    return scanned


def _check_fits(files: Mapping[str, _Scanned], module_shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Decide each readable file's `fits` against the model's module shapes (reads the files: slow for big ones)."""
    import torch

    from sdapi.engines.adapter_files import AdapterFileError, compute_delta, group_factors, looks_like_sdxl

    for scanned in files.values():
        entry = scanned.entry
        if scanned.read_error is not None:
            continue
        entry.fits, entry.error = True, None
        names = scanned.module_names
        if looks_like_sdxl(names):
            entry.fits, entry.error = False, "made for SDXL (input_blocks/te1/te2 keys); the model is SD 1.x/2.x"
            continue
        missing = [name for name in names if name not in module_shapes]
        if missing:
            entry.fits = False
            entry.error = f"{len(missing)} module(s) not in the model, e.g. {missing[0]}"
            continue
        try:
            modules = group_factors(read_adapter_file(scanned.path))
            for key, factors in modules.items():
                compute_delta(key, factors, torch.Size(module_shapes[key]))
        except AdapterFileError as error:
            entry.fits, entry.error = False, str(error)


class LoraLibrary:
    """Scans loras.dir; answers which LoRAs exist and fit; resolves a request's `loras` into LoraSpecs."""

    def __init__(self, config: LorasConfig, directory: Path) -> None:
        self._config = config
        self.directory = directory
        self._files: dict[str, _Scanned] = {}
        self._model_shapes: Mapping[str, tuple[int, ...]] | None = None
        self._lock = threading.Lock()

    def scan(self) -> list[LoraEntry]:
        """Read every .safetensors in the folder; a bad file becomes an entry with an error, never an exception."""
        self.directory.mkdir(parents=True, exist_ok=True)
        max_bytes = int(self._config.max_file_mb * 2**20)
        files: dict[str, _Scanned] = {}
        for path in sorted(self.directory.glob("*.safetensors")):
            try:
                files[path.stem] = _scan_file(path, max_bytes)
            except OSError as error:
                logger.warning("LoRA %s unreadable: %s", path.name, error)
        shapes = self._model_shapes
        if shapes is not None:
            _check_fits(files, shapes)  # before the swap, so readers never wait on file reads
        with self._lock:
            self._files = files
        logger.info("LoRA library: %d file(s) in %s", len(files), self.directory)
        return self.entries()

    def entries(self) -> list[LoraEntry]:
        with self._lock:
            return [scanned.entry for scanned in self._files.values()]

    def set_model(self, module_shapes: Mapping[str, tuple[int, ...]]) -> None:
        """The loaded model's adapter targets (kohya name -> weight shape): decides each file's `fits`."""
        with self._lock:
            self._model_shapes = module_shapes
            files = dict(self._files)
        _check_fits(files, module_shapes)

    def path_for(self, spec: LoraSpec) -> Path:
        """The file behind a resolved LoRA; raise InvalidParameter when it is gone or changed since submit."""
        with self._lock:
            scanned = self._files.get(spec.name)
        if scanned is None or scanned.full_sha256 != spec.sha256:
            raise InvalidParameter("loras", f"LoRA {spec.name} 已被删除或修改（提交后文件内容变化）")
        return scanned.path

    def resolve(self, requested: Sequence[LoraRequest]) -> tuple[LoraSpec, ...]:
        """Defaults plus the request's LoRAs (the request's weight wins), each checked; raise InvalidParameter."""
        if len(requested) > self._config.max_per_request:
            raise InvalidParameter("loras", f"loras 最多 {self._config.max_per_request} 个，收到 {len(requested)} 个")
        names = [item.name for item in requested]
        if len(set(names)) != len(names):
            raise InvalidParameter("loras", "loras 中有重复的名称")
        weights = {item.name: item.weight for item in self._config.defaults}
        weights.update((item.name, item.weight) for item in requested)
        specs = []
        with self._lock:
            for name, weight in weights.items():
                scanned = self._files.get(name)
                if scanned is None:
                    available = ", ".join(sorted(self._files)) or "（无）"
                    raise InvalidParameter("loras", f"LoRA 不存在：{name!r}。可用：{available}")
                if scanned.entry.error is not None:
                    raise InvalidParameter("loras", f"LoRA {name} 不可用：{scanned.entry.error}")
                specs.append(LoraSpec(name=name, weight=weight, sha256=scanned.full_sha256))
        return tuple(specs)
