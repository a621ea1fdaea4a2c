"""Text encoders loaded once for every model that has the same one: FLUX.1 [dev] and [schnell] share CLIP-L and a
9 GB T5-XXL, SD 3.5 Medium and Large share all three of theirs, so a worker serving several such models keeps one
copy of each. Two encoders are the same when their weight files are: the same size and the same first and last MiB
(a safetensors file begins with its tensor names and offsets; reading 2 MiB a file costs nothing beside a load).

Only encoders that nothing changes per run are shared: those adapters never merge into (the transformer families'
LoRAs change the transformer alone) in models loaded whole onto one device (CPU offload moves modules by hooks
each pipeline owns). A shared encoder lives as long as some loaded model holds it (weak references here)."""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
from pathlib import Path
from typing import Any

from sdapi.families import Family

_EDGE = 2**20  # bytes read from each end of a weight file
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def _file_key(path: Path) -> tuple[int, str]:
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as file:
        digest.update(file.read(_EDGE))
        if size > 2 * _EDGE:
            file.seek(size - _EDGE)
            digest.update(file.read(_EDGE))
    return size, digest.hexdigest()


def encoder_key(folder: Path) -> tuple[tuple[int, str], ...] | None:
    """What identifies the text encoder saved in `folder` (its weight files' sizes and edges); None when it has no
    safetensors weights."""
    single, index = (folder / name for name in _WEIGHTS)
    if single.is_file():
        return (_file_key(single),)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return tuple(_file_key(folder / shard) for shard in shards)
    return None


class SharedTextEncoders:
    """The process's loaded text encoders that other models may reuse, by content and dtype."""

    def __init__(self) -> None:
        self._modules: dict[tuple[object, ...], weakref.ref[Any]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def shareable(family: Family) -> tuple[str, ...]:
        """The text encoders of `family` that no adapter changes."""
        return tuple(part for part in family.text_encoders if part not in family.adapter_parts)

    def keys(self, folder: Path, family: Family, dtype: object) -> dict[str, tuple[object, ...]]:
        """What identifies each shareable encoder of the model in `folder`, loaded in `dtype`, by part (its files'
        edges are read here, once per load, outside the lock)."""
        keys: dict[str, tuple[object, ...]] = {}
        for part in self.shareable(family):
            key = encoder_key(folder / part) if (folder / part).is_dir() else None
            if key is not None:
                keys[part] = (str(dtype), key)
        return keys

    def loaded_for(self, keys: dict[str, tuple[object, ...]]) -> dict[str, Any]:
        """The already-loaded encoders with these `keys` a model can take instead of loading its own, by part."""
        found = {}
        with self._lock:
            for part, key in keys.items():
                module = self._modules[key]() if key in self._modules else None
                if module is not None:
                    found[part] = module
        return found

    def remember(self, keys: dict[str, tuple[object, ...]], pipeline: Any) -> None:
        """Offer the encoders of a model just loaded (its encoders' `keys`) to the models loaded after it."""
        with self._lock:
            for part, key in keys.items():
                module = getattr(pipeline, part, None)
                if module is not None and (key not in self._modules or self._modules[key]() is None):
                    self._modules[key] = weakref.ref(module)


# One per process: every engine of a worker's pool loads through it.
SHARED_TEXT_ENCODERS = SharedTextEncoders()
