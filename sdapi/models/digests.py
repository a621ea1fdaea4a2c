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


# Where a diffusers folder keeps the UNet's weights, in the order they are looked for.
_UNET_WEIGHTS = (
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.bin",
)


def model_weights_sha256(source: str) -> str | None:
    """What identifies a model's weights: the sha256 of a single-file checkpoint, or of a diffusers folder's UNet
    weights (the part that differs between fine-tunes); None for a hub id or a folder without them."""
    path = Path(source)
    if path.is_file():
        return sha256_file(path)
    for relative in _UNET_WEIGHTS:
        if (path / relative).is_file():
            return sha256_file(path / relative)
    return None
