"""Content hashes of files: what pins a LoRA or a model's weights to exactly the bytes that were checked."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

_BLOCK = 1 << 20


def sha256_file(path: Path, digest: Any = None) -> str:
    """The hex sha256 of a file's bytes, read in blocks; with `digest`, feed that running hash instead."""
    digest = digest if digest is not None else hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(_BLOCK), b""):
            digest.update(block)
    return str(digest.hexdigest())
