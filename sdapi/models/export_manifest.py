"""export.json: what an ONNX export holds. Written by `python -m export`, read by the ONNX engine."""

from __future__ import annotations

from pathlib import Path

import msgspec

from sdapi.errors import ModelLoadFailed
from sdapi.families import SD1, family_named

MANIFEST_NAME = "export.json"
# Why an export never serves a prompt naming textual-inversion embeddings (those run on torch).
ONNX_NO_EMBEDDINGS = "ONNX 导出的文本编码器词表固定，不能使用提示词中的嵌入（textual inversion）"
# The second pass resizes latents and may run a neural upscaler: torch runs it.
ONNX_NO_HIRES = "ONNX 导出不支持高分辨率第二遍（hires），需要 torch 引擎"
# ControlNet residuals would need a UNet exported to take them as inputs: torch runs them.
ONNX_NO_CONTROL = "ONNX 导出不支持 ControlNet 与 IP-Adapter，需要 torch 引擎"


class MergedLora(msgspec.Struct, frozen=True):
    name: str
    file: str
    weight: float
    sha256: str


class ExportManifest(msgspec.Struct, frozen=True, kw_only=True):
    source: str
    source_sha256: str  # over the source's weight files, in name order
    loras: list[MergedLora] = []
    precision: str  # fp32 | fp16
    opset: int
    # UNet graph optimization: "none", or which fusions ran ("cpu fusions", "cuda fusions without attention"...).
    optimization: str = "none"
    versions: dict[str, str] = {}
    created_at: str
    # Its family's name (sdapi.families); exports from before families were recorded are SD 1.x.
    family: str = SD1.name

    def lora_set(self) -> frozenset[tuple[str, float]]:
        """(sha256, weight) of every merged LoRA: a request routes to ONNX exactly when its set equals this."""
        return frozenset((lora.sha256, lora.weight) for lora in self.loras)


def write_manifest(folder: Path, manifest: ExportManifest) -> None:
    (folder / MANIFEST_NAME).write_bytes(msgspec.json.format(msgspec.json.encode(manifest), indent=2))


def read_manifest(folder: Path) -> ExportManifest:
    """The manifest of an export folder; raise ModelLoadFailed when it is missing, incomplete or unreadable."""
    path = folder / MANIFEST_NAME
    try:
        manifest = msgspec.json.decode(path.read_bytes(), type=ExportManifest)
    except FileNotFoundError:
        raise ModelLoadFailed(f"ONNX 导出目录缺少 {MANIFEST_NAME}：{folder}（请用 python -m export 生成）") from None
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as error:
        raise ModelLoadFailed(f"无法读取 {path}：{error}") from None
    try:
        parts = family_named(manifest.family).onnx_parts
    except KeyError:
        raise ModelLoadFailed(f"{path}：未知的模型家族 {manifest.family!r}") from None
    missing = [part for part in parts if not (folder / part / "model.onnx").is_file()]
    if missing:
        raise ModelLoadFailed(f"ONNX 导出不完整，缺少：{', '.join(missing)}（{folder}）")
    return manifest
