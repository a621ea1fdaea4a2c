"""The LoRA library: the files in loras.dir, what each is, whether it fits the model, and request resolution.

Entries are immutable: a scan or a model change builds a new set and swaps it in under the lock, so a reader of
`entries()` never sees one half-updated.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec

from sdapi.config import Config, LorasConfig
from sdapi.core.addons import AddonKind
from sdapi.core.request import LoraRequest, LoraSpec
from sdapi.errors import InvalidParameter
from sdapi.families import Family, ModelFamily, family_named
from sdapi.models.digests import sha256_file

logger = logging.getLogger(__name__)


class LoraEntry(msgspec.Struct, frozen=True):
    """What GET /api/v1/loras shows of one file."""

    name: str
    type: str | None  # lora | loha | lokr; None when the file could not be read
    parts: list[str]  # unet, text_encoder
    size_bytes: int
    sha256: str  # first 12 hex digits
    fits: bool | None  # None until the model is loaded
    error: str | None  # why the file cannot be used
    modules: int = 0
    family: str | None = None  # the family the file was made for (sdapi.families); None when unreadable


class _Scanned(msgspec.Struct, frozen=True):
    entry: LoraEntry
    path: Path
    full_sha256: str
    # Why the file itself is unusable (too large, corrupt, unknown keys, NaN); fit problems are decided later.
    read_error: str | None = None


def _scan_file(path: Path, max_bytes: int) -> _Scanned:
    # files.py reads tensors with torch: imported when there is a file to read, so an API node with no LoRA folder
    # never imports torch.
    from sdapi.loras.files import AdapterFileError, file_kind, group_factors, made_for, part_of, read_adapter_file

    size = path.stat().st_size
    sha = sha256_file(path)
    entry = LoraEntry(name=path.stem, type=None, parts=[], size_bytes=size, sha256=sha[:12], fits=None, error=None)
    read_error: str | None = None
    if size > max_bytes:
        read_error = f"文件大小 {size / 2**20:.1f} MB，超过 loras.max_file_mb（{max_bytes / 2**20:.0f} MB）"
    else:
        try:
            modules = group_factors(read_adapter_file(path))
        except AdapterFileError as error:
            read_error = str(error)
        else:
            entry = msgspec.structs.replace(
                entry,
                type=file_kind(modules),
                parts=sorted({part_of(key) for key in modules}),
                modules=len(modules),
                family=_family_name(made_for(modules)),
            )
    if read_error is not None:
        entry = msgspec.structs.replace(entry, fits=False, error=read_error)
    return _Scanned(entry=entry, path=path, full_sha256=sha, read_error=read_error)


def _family_name(family: Family | None) -> str | None:
    return family.name if family is not None else None


def _with_fits(scanned: _Scanned, module_shapes: Mapping[str, tuple[int, ...]]) -> _Scanned:
    """A copy of `scanned` whose entry says whether the file fits the model (reads the file: slow for big ones)."""
    from sdapi.loras.files import AdapterFileError, check_fits

    if scanned.read_error is not None:
        return scanned
    try:
        check_fits(scanned.path, module_shapes)
    except AdapterFileError as error:
        entry = msgspec.structs.replace(scanned.entry, fits=False, error=str(error))
    else:
        entry = msgspec.structs.replace(scanned.entry, fits=True, error=None)
    return msgspec.structs.replace(scanned, entry=entry)


class LoraLibrary:
    """Scans loras.dir; answers which LoRAs exist and fit; resolves a request's `loras` into LoraSpecs."""

    kind = AddonKind(
        name="loras",
        list_key="loras",
        config_section="loras",
        entry_type=LoraEntry,
        summary="LoRA 列表",
        description="loras.dir 中的文件：类型、作用部分、大小、sha256、是否适配当前模型。",
        refresh_summary="重新扫描 LoRA",
    )

    @classmethod
    def from_config(cls, config: Config) -> LoraLibrary:
        return cls(config.loras, config.loras_path)

    def listed(self) -> list[LoraEntry]:
        return self.entries()

    def __init__(self, config: LorasConfig, directory: Path) -> None:
        self._config = config
        self.directory = directory
        self._files: dict[str, _Scanned] = {}
        self._model_shapes: Mapping[str, tuple[int, ...]] | None = None
        # The adapter targets of the other served models, by name, and what each file's check against them found
        # (by the file's sha256, so a changed file is checked again): None when it fits, else why not.
        self._other_shapes: dict[str, Mapping[str, tuple[int, ...]]] = {}
        self._other_fits: dict[tuple[str, str], str | None] = {}
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
        if shapes is not None:  # decided before the swap, so readers never wait on file reads
            files = {name: _with_fits(scanned, shapes) for name, scanned in files.items()}
        with self._lock:
            self._files = files
        logger.info("LoRA library: %d file(s) in %s", len(files), self.directory)
        return self.entries()

    def entries(self) -> list[LoraEntry]:
        with self._lock:
            return [scanned.entry for scanned in self._files.values()]

    def set_model(self, module_shapes: Mapping[str, tuple[int, ...]], model: str | None = None) -> None:
        """A model's adapter targets (kohya name -> weight shape). For the default model (`model` None) they decide
        each file's `fits` in entries(); for another model, whether a request for it may use a file."""
        if model is not None:
            with self._lock:
                self._other_shapes[model] = module_shapes
            return
        with self._lock:
            self._model_shapes = module_shapes
            files = self._files
        decided = {name: _with_fits(scanned, module_shapes) for name, scanned in files.items()}
        with self._lock:
            # A scan that swapped in meanwhile already decided with these shapes: its set is newer, keep it.
            if self._files is files:
                self._files = decided

    def path_for(self, spec: LoraSpec) -> Path:
        """The file behind a resolved LoRA; raise InvalidParameter when it is gone or changed since submit."""
        with self._lock:
            scanned = self._files.get(spec.name)
        if scanned is None or scanned.full_sha256 != spec.sha256:
            raise InvalidParameter("loras", f"LoRA {spec.name} 已被删除或修改（提交后文件内容变化）")
        return scanned.path

    def resolve(
        self, requested: Sequence[LoraRequest], model: ModelFamily | None = None, other_model: str | None = None
    ) -> tuple[LoraSpec, ...]:
        """Defaults plus the request's LoRAs (the request's weight wins), each checked; raise InvalidParameter.

        `model`: the family of the model the request runs on (a file made for another family is refused);
        `other_model`: its name when it is not the default model (its fits are checked against its own targets,
        when set_model gave them; this may read the files: call it off the event loop)."""
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
                # The entry's own error is its fit to the default model: it speaks for the default only.
                error = scanned.read_error if other_model is not None else scanned.read_error or scanned.entry.error
                if error is None and model is not None and scanned.entry.family is not None:
                    error = model.family.addon_mismatch(family_named(scanned.entry.family))
                if error is None and other_model is not None:
                    error = self._fit_error(scanned, other_model)
                if error is not None:
                    raise InvalidParameter("loras", f"LoRA {name} 不可用：{error}")
                specs.append(LoraSpec(name=name, weight=weight, sha256=scanned.full_sha256))
        return tuple(specs)

    def _fit_error(self, scanned: _Scanned, model: str) -> str | None:
        """Why `scanned` does not fit `model` (None: it fits, or the model's targets are not known); under the lock."""
        shapes = self._other_shapes.get(model)
        if shapes is None:
            return None
        key = (model, scanned.full_sha256)
        if key not in self._other_fits:
            self._other_fits[key] = _with_fits(scanned, shapes).entry.error
        return self._other_fits[key]
