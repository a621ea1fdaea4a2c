"""Textual-inversion embedding files in each format the service reads, with seeded random vectors, and broken ones.

The vectors are scaled to the size of a token embedding of the model they are for, so that a prompt naming one
changes the picture the way a trained embedding would, not by an out-of-range input.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def vectors(count: int, width: int, seed: int) -> torch.Tensor:
    """[count, width] seeded random vectors of the norm CLIP token embeddings have at these toy widths."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, width, generator=generator) * 0.5


def write_a1111_pt(path: Path, matrix: torch.Tensor) -> Path:
    """AUTOMATIC1111's .pt: string_to_param {"*": vectors}, with the name and training step beside them."""
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": matrix}, "name": path.stem, "step": 3000}, path)
    return path


def write_a1111_safetensors(path: Path, matrix: torch.Tensor) -> Path:
    """AUTOMATIC1111's .safetensors: one tensor named emb_params."""
    save_file({"emb_params": matrix.contiguous()}, str(path))
    return path


def write_diffusers(path: Path, matrix: torch.Tensor, token: str = "<cat-toy>") -> Path:
    """diffusers' learned_embeds layout: {token: vectors}."""
    save_file({token: matrix.contiguous()}, str(path))
    return path


def write_sdxl(path: Path, first: torch.Tensor, second: torch.Tensor) -> Path:
    """SDXL's two-encoder form: clip_l for the first text encoder, clip_g for the second."""
    save_file({"clip_l": first.contiguous(), "clip_g": second.contiguous()}, str(path))
    return path


def write_broken(folder: Path) -> dict[str, str]:
    """Files that cannot be used, by name, with a word their error must contain."""
    (folder / "corrupt_embedding.safetensors").write_bytes(b"not a safetensors file at all")
    save_file({"emb_params": torch.full((1, 32), float("nan"))}, str(folder / "nan_embedding.safetensors"))
    save_file({"a": torch.zeros(1, 32), "b": torch.zeros(1, 32)}, str(folder / "two_tensors.safetensors"))
    return {"corrupt_embedding": "safetensors", "nan_embedding": "NaN", "two_tensors": "格式"}
