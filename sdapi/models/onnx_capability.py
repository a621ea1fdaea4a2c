"""What an ONNX export can serve, stated once: exactly the LoRA set merged into it, at sides that are multiples of
its traced UNet's downsampling, and never textual-inversion embeddings, the second pass, ControlNet units or image
prompts (those run on torch). The model catalog asks it at submit time (an ONNX-only model refuses with a 400), the
ONNX engine at run time and routers to choose an engine, so every node refuses alike."""

from __future__ import annotations

from pathlib import Path

import msgspec

from sdapi.core.params import GenerationParams
from sdapi.errors import InvalidParameter, ModelLoadFailed
from sdapi.families import family_named
from sdapi.models.configs import read_config
from sdapi.models.export_manifest import (
    ONNX_NO_CONTROL,
    ONNX_NO_EMBEDDINGS,
    ONNX_NO_HIRES,
    ExportManifest,
    read_manifest,
)

ONNX_NO_SPEEDUPS = (
    "ONNX 导出是固定的计算图：微型解码器（vae_decoder）、步间缓存（step_cache）与 token_merging 请使用 torch 引擎"
)
ONNX_NO_VAE_TILING = "ONNX 导出的 VAE 整图解码：VAE 分块（vae_tiling）请使用 torch 引擎"
ONNX_NO_VAE = "ONNX 导出带着自己的 VAE：换用 vae.dir 中的 VAE 请使用 torch 引擎"
ONNX_NO_TILING = "ONNX 导出的卷积填充是固定的：无缝平铺（tiling）请使用 torch 引擎"
ONNX_NO_CLIP_SKIP = "ONNX 导出的文本编码器只输出最后一层：clip_skip 大于 1 时请使用 torch 引擎"


def refuse_what_no_export_serves(params: GenerationParams, hint: str = "") -> None:
    """Raise InvalidParameter (its message ending in `hint`) for what no export serves, whatever it holds."""
    if params.embeddings:
        raise InvalidParameter("prompt", ONNX_NO_EMBEDDINGS + hint)
    if params.hires is not None:
        raise InvalidParameter("hires", ONNX_NO_HIRES + hint)
    if params.controlnets or params.ip_adapters:
        raise InvalidParameter("controlnets", ONNX_NO_CONTROL + hint)
    if params.vae_decoder != "full" or params.step_cache is not None or params.token_merging > 0:
        field = (
            "vae_decoder" if params.vae_decoder != "full" else "step_cache" if params.step_cache else "token_merging"
        )
        raise InvalidParameter(field, ONNX_NO_SPEEDUPS + hint)
    if params.vae_tiling:  # the exported VAE decodes the whole picture at once
        raise InvalidParameter("vae_tiling", ONNX_NO_VAE_TILING + hint)
    if params.vae is not None:  # the export's VAE is its own graph
        raise InvalidParameter("vae", ONNX_NO_VAE + hint)
    if params.tiling is not None:  # the exported graphs' padding is fixed
        raise InvalidParameter("tiling", ONNX_NO_TILING + hint)
    if params.clip_skip > 1:  # the exported text encoder gives its last layer only
        raise InvalidParameter("clip_skip", ONNX_NO_CLIP_SKIP + hint)


class OnnxCapability(msgspec.Struct, frozen=True):
    """One export's capability, from its manifest and configs."""

    lora_set: frozenset[tuple[str, float]]  # (sha256, weight) of each merged LoRA
    merged: str  # "name:weight, ..." for the message
    side_multiple: int
    # Whether optimum has image-to-image and inpainting pipelines for the export's family (FLUX.1: text-to-image
    # only); the family's label names it in the refusal.
    edits: bool = True
    family_label: str = ""

    def check(self, params: GenerationParams, hint: str = "") -> None:
        """Raise InvalidParameter, naming the field and why (then `hint`), for what this export cannot serve."""
        refuse_what_no_export_serves(params, hint)
        if frozenset((spec.sha256, spec.weight) for spec in params.loras) != self.lora_set:
            message = f"ONNX 导出只能使用导出时合并的 LoRA 组合（{self.merged or '无'}）"
            raise InvalidParameter("loras", message + hint)
        if not self.edits and params.is_image_to_image:
            field = "mask_image" if params.inpaint is not None else "init_image"
            message = f"optimum-onnx 没有 {self.family_label} 的图生图与局部重绘流水线：ONNX 导出只能文生图"
            raise InvalidParameter(field, message + hint)
        if params.width % self.side_multiple or params.height % self.side_multiple:
            raise InvalidParameter(
                "width",
                f"width/height 无效：{params.width}x{params.height}。ONNX 引擎要求宽高为 {self.side_multiple} 的倍数"
                + hint,
            )


def read_capability(folder: Path, manifest: ExportManifest | None = None) -> OnnxCapability:
    """The capability of the export in `folder` (its `manifest`, read here unless the caller has read it already);
    raise ModelLoadFailed when its manifest or configs cannot be read."""
    manifest = manifest if manifest is not None else read_manifest(folder)
    family = family_named(manifest.family)
    denoiser = read_config(folder / family.denoiser / "config.json")
    vae = read_config(folder / "vae_decoder" / "config.json")
    vae_blocks = vae.get("block_out_channels") if vae else None
    if denoiser is None or not isinstance(vae_blocks, list):
        raise ModelLoadFailed(f"ONNX 导出缺少可读的 {family.denoiser} 或 vae_decoder 配置（{folder}）")
    unet_blocks = denoiser.get("block_out_channels")
    if isinstance(unet_blocks, list):
        # The VAE's scale factor times the UNet's own downsampling: the latent must halve evenly at every UNet
        # block (torch's UNet adapts to odd sizes; the traced graph cannot).
        side_multiple = 2 ** (len(vae_blocks) - 1) * 2 ** (len(unet_blocks) - 1)
    else:  # a transformer: its patches, on the VAE's scale
        side_multiple = family.side_multiple
    merged = ", ".join(f"{lora.name}:{lora.weight:g}" for lora in manifest.loras)
    return OnnxCapability(
        lora_set=manifest.lora_set(),
        merged=merged,
        side_multiple=side_multiple,
        edits=all(family.onnx_pipelines),
        family_label=family.label,
    )
