"""export.json: what an ONNX export holds. Written by `python -m export`, read by the ONNX engine."""

from __future__ import annotations

from pathlib import Path

import msgspec

from sdapi.errors import ModelLoadFailed

MANIFEST_NAME = "export.json"
ONNX_PARTS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
# SDXL adds its second text encoder.
SDXL_ONNX_PARTS = ("text_encoder", "text_encoder_2", "unet", "vae_encoder", "vae_decoder")
# Why an export never serves a prompt naming textual-inversion embeddings (those run on torch).
ONNX_NO_EMBEDDINGS = "ONNX 导出的文本编码器词表固定，不能使用提示词中的嵌入（textual inversion）"
# The second pass resizes latents and may run a neural upscaler: torch runs it.
ONNX_NO_HIRES = "ONNX 导出不支持高分辨率第二遍（hires），需要 torch 引擎"
# ControlNet residuals would need a UNet exported to take them as inputs: torch runs them.
ONNX_NO_CONTROL = "ONNX 导出不支持 ControlNet 与 IP-Adapter，需要 torch 引擎"


def onnx_parts(family: str) -> tuple[str, ...]:
    """The ONNX models an export of `family` (sd1 | sd2 | sdxl) holds."""
    return SDXL_ONNX_PARTS if family == "sdxl" else ONNX_PARTS


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
    # sd1 | sd2 | sdxl; exports from before families were recorded are SD 1.x.
    family: str = "sd1"

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
    missing = [part for part in onnx_parts(manifest.family) if not (folder / part / "model.onnx").is_file()]
    if missing:
        raise ModelLoadFailed(f"ONNX 导出不完整，缺少：{', '.join(missing)}（{folder}）")
    return manifest
