"""The embedding library: the files in embeddings.dir, what each holds, and which a prompt names.

An embedding is used by writing its name (the file's stem) in the prompt or the negative prompt, as in
AUTOMATIC1111: as a word of its own, in any case ("by SDAPI-Orange-Ball," names sdapi-orange-ball). Entries are
immutable and swapped in whole under the lock, as in the LoRA library.
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import msgspec

from sdapi.config import Config
from sdapi.core.addons import AddonKind
from sdapi.core.request import EmbeddingSpec
from sdapi.errors import InvalidParameter
from sdapi.families import family_of_embedding_widths
from sdapi.models.digests import sha256_file
from sdapi.models.pinned import pinned_path

logger = logging.getLogger(__name__)

# What embedding files are named with, in the order a folder is read.
SUFFIXES = (".safetensors", ".pt", ".bin")


class EmbeddingEntry(msgspec.Struct, frozen=True):
    """What GET /api/v1/embeddings shows of one file."""

    name: str
    vectors: int  # tokens of the prompt it takes
    widths: list[int]  # the width each text encoder must have (two for SDXL)
    family: (
        str | None
    )  # the family its widths are (sdapi.families); None for other widths (a tiny model's) or unreadable
    size_bytes: int
    sha256: str  # first 12 hex digits
    fits: bool | None  # against the default model; None when its text encoders' widths are not known from disk
    error: str | None  # why the file cannot be used


class _Scanned(msgspec.Struct, frozen=True):
    entry: EmbeddingEntry
    path: Path
    full_sha256: str
    pattern: re.Pattern[str]


def name_pattern(name: str) -> re.Pattern[str]:
    """Where `name` stands as a word of its own in a prompt (not inside a longer word or hyphenated name)."""
    return re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])", re.IGNORECASE)


def _scan_file(path: Path, max_bytes: int) -> _Scanned:
    # files.py reads tensors with torch: imported when there is a file to read, so an API node with no embeddings
    # never imports torch.
    from sdapi.embeddings.files import EmbeddingFileError, read_embedding

    size = path.stat().st_size
    sha = sha256_file(path)
    error: str | None = None
    vectors, widths = 0, []
    if size > max_bytes:
        error = f"文件大小 {size / 2**20:.1f} MB，超过 embeddings.max_file_mb（{max_bytes / 2**20:.0f} MB）"
    else:
        try:
            read = read_embedding(path)
        except EmbeddingFileError as problem:
            error = str(problem)
        else:
            vectors, widths = read.vectors, list(read.widths)
    entry = EmbeddingEntry(
        name=path.stem,
        vectors=vectors,
        widths=widths,
        family=_family_name(tuple(widths)),
        size_bytes=size,
        sha256=sha[:12],
        fits=False if error else None,
        error=error,
    )
    return _Scanned(entry=entry, path=path, full_sha256=sha, pattern=name_pattern(path.stem))


def _family_name(widths: tuple[int, ...]) -> str | None:
    family = family_of_embedding_widths(widths)
    return None if family is None else family.name


def _fit_error(entry: EmbeddingEntry, widths: tuple[int, ...] | None) -> str | None:
    if entry.error is not None:
        return entry.error
    if widths is None or tuple(entry.widths) == widths:
        return None
    made = entry.family.upper() if entry.family else f"宽度 {entry.widths}"
    return f"为 {made} 的文本编码器制作（宽度 {entry.widths}），所选模型的文本编码器宽度为 {list(widths)}"


class EmbeddingLibrary:
    """Scans embeddings.dir; answers which embeddings exist; finds the ones a prompt names."""

    kind = AddonKind(
        name="embeddings",
        list_key="embeddings",
        config_section="embeddings",
        entry_type=EmbeddingEntry,
        summary="嵌入（textual inversion）列表",
        description="embeddings.dir 中的文件：向量数、文本编码器宽度、家族、大小、sha256、是否适配默认模型。"
        "在提示词或负面提示词中写出嵌入的名称（文件名，不含扩展名）即可使用。",
        refresh_summary="重新扫描嵌入",
    )
    # The default model's text-encoder widths (what the list's `fits` is decided against); None: not known from
    # its files. Set by the composition root, which reads the model catalog.
    default_widths: tuple[int, ...] | None = None

    @classmethod
    def from_config(cls, config: Config) -> EmbeddingLibrary:
        return cls(config.embeddings_path, config.embeddings.max_file_mb)

    def listed(self) -> list[EmbeddingEntry]:
        return self.entries(self.default_widths)

    def __init__(self, directory: Path, max_file_mb: float) -> None:
        self.directory = directory
        self._max_bytes = int(max_file_mb * 2**20)
        self._files: dict[str, _Scanned] = {}
        self._lock = threading.Lock()

    def scan(self) -> None:
        """Read every embedding file in the folder; a bad file becomes an entry with an error, never an exception.
        Two files of one stem (a.pt and a.safetensors): the first of files.SUFFIXES wins."""
        self.directory.mkdir(parents=True, exist_ok=True)
        files: dict[str, _Scanned] = {}
        for suffix in SUFFIXES:
            for path in sorted(self.directory.glob(f"*{suffix}")):
                if path.stem.lower() in {name.lower() for name in files}:
                    continue
                try:
                    files[path.stem] = _scan_file(path, self._max_bytes)
                except OSError as error:
                    logger.warning("embedding %s unreadable: %s", path.name, error)
        with self._lock:
            self._files = files
        logger.info("embedding library: %d file(s) in %s", len(files), self.directory)

    def entries(self, widths: tuple[int, ...] | None = None) -> list[EmbeddingEntry]:
        """Every file, sorted by name; `fits` decided against text encoders of `widths` when given."""
        with self._lock:
            scanned = sorted(self._files.values(), key=lambda item: item.entry.name.lower())
        if widths is None:
            return [item.entry for item in scanned]
        return [
            msgspec.structs.replace(item.entry, fits=(error := _fit_error(item.entry, widths)) is None, error=error)
            for item in scanned
        ]

    def named_in(self, texts: list[str | None], widths: tuple[int, ...] | None) -> tuple[EmbeddingSpec, ...]:
        """The embeddings the prompts name, by name; raise InvalidParameter (field `prompt`) for one that cannot be
        used on a model whose text encoders have `widths` (None: not known before loading; the worker checks)."""
        with self._lock:
            files = list(self._files.values())
        specs = []
        for scanned in sorted(files, key=lambda item: item.entry.name.lower()):
            if not any(text and scanned.pattern.search(text) for text in texts):
                continue
            error = _fit_error(scanned.entry, widths)
            if error is not None:
                raise InvalidParameter("prompt", f"提示词中的嵌入 {scanned.entry.name} 不可用：{error}")
            specs.append(EmbeddingSpec(name=scanned.entry.name, sha256=scanned.full_sha256))
        return tuple(specs)

    def path_for(self, spec: EmbeddingSpec) -> Path:
        """The file behind a resolved embedding; raise InvalidParameter when it is gone or changed since submit.
        A name this process has not seen (added after its last scan, through another node) rescans the folder."""
        gone = f"嵌入 {spec.name} 已被删除或修改（提交后文件内容变化）"
        return pinned_path(lambda: self._lookup(spec.name), self.scan, spec.sha256, "prompt", gone)

    def _lookup(self, name: str) -> _Scanned | None:
        with self._lock:
            return self._files.get(name)
