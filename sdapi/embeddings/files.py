"""The textual-inversion file formats, read into one shape: the vectors each text encoder gets. The only module
that reads embedding files.

Formats read (what AUTOMATIC1111, diffusers and kohya write):
- A1111 `.pt`: a pickle of {"string_to_param": {"*": tensor [n, width]}, "name": ..., "step": ..., ...};
- A1111 `.safetensors`: {"emb_params": tensor [n, width]};
- diffusers (`learned_embeds.safetensors` / `.bin`): one key, the token, to a tensor [width] or [n, width];
- SDXL: {"clip_l": [n, 768], "clip_g": [n, 1280]}, for the first and the second text encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sdapi.families import TEXT_ENCODER_PARTS

# The text encoders an embedding's vectors go to, as the pipeline names them (a two-encoder file's: both).
FIRST, SECOND = TEXT_ENCODER_PARTS[:2]


class EmbeddingFileError(ValueError):
    """The file is not an embedding this service reads (the message reaches clients: Chinese first)."""


@dataclass(frozen=True)
class EmbeddingVectors:
    """One file's vectors: text encoder name -> tensor [vectors, width] (float32, on the CPU)."""

    parts: dict[str, torch.Tensor]

    @property
    def vectors(self) -> int:
        return int(next(iter(self.parts.values())).shape[0])

    @property
    def widths(self) -> tuple[int, ...]:
        """The width each text encoder must have, first encoder first."""
        return tuple(int(self.parts[name].shape[1]) for name in (FIRST, SECOND) if name in self.parts)


def _load(path: Path) -> object:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise EmbeddingFileError(f"无法读取 safetensors 文件：{error}") from None
    try:
        # weights_only: a pickle may run code when loaded; tensors, dicts, strings and numbers are all it needs.
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise EmbeddingFileError(f"无法读取 .pt/.bin 文件（只读取张量，不执行其中代码）：{error}") from None


def _matrix(value: object, key: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise EmbeddingFileError(f"{key} 不是张量")
    matrix = value.detach().to(torch.float32)
    if matrix.dim() == 1:
        matrix = matrix.unsqueeze(0)
    if matrix.dim() != 2 or matrix.shape[0] < 1 or matrix.shape[1] < 1:
        raise EmbeddingFileError(f"{key} 的形状 {tuple(value.shape)} 不是 [向量数, 宽度]")
    if not torch.isfinite(matrix).all():
        raise EmbeddingFileError(f"{key} 含有 NaN 或无穷大")
    return matrix


def parse_embedding(state: object) -> EmbeddingVectors:
    """The vectors of a loaded file's contents; raise EmbeddingFileError when it is no known format."""
    if isinstance(state, torch.Tensor):
        return EmbeddingVectors({FIRST: _matrix(state, "tensor")})
    if not isinstance(state, dict):
        raise EmbeddingFileError("不是 textual-inversion 嵌入文件（应为张量字典）")
    if "clip_l" in state or "clip_g" in state:
        if not ("clip_l" in state and "clip_g" in state):
            raise EmbeddingFileError("SDXL 嵌入需要同时含有 clip_l 和 clip_g")
        first, second = _matrix(state["clip_l"], "clip_l"), _matrix(state["clip_g"], "clip_g")
        if first.shape[0] != second.shape[0]:
            raise EmbeddingFileError(f"clip_l 与 clip_g 的向量数不同（{first.shape[0]} 与 {second.shape[0]}）")
        return EmbeddingVectors({FIRST: first, SECOND: second})
    if "string_to_param" in state:
        params = state["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise EmbeddingFileError("string_to_param 应只含一个张量")
        return EmbeddingVectors({FIRST: _matrix(next(iter(params.values())), "string_to_param")})
    if "emb_params" in state:
        return EmbeddingVectors({FIRST: _matrix(state["emb_params"], "emb_params")})
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if len(tensors) == 1:  # diffusers: {token: vectors}
        key, value = next(iter(tensors.items()))
        return EmbeddingVectors({FIRST: _matrix(value, str(key))})
    raise EmbeddingFileError(
        "不是已知的嵌入格式（A1111 的 string_to_param / emb_params、diffusers 的单个张量、SDXL 的 clip_l + clip_g）"
    )


def read_embedding(path: Path) -> EmbeddingVectors:
    """Read and parse one embedding file; raise EmbeddingFileError."""
    return parse_embedding(_load(path))
