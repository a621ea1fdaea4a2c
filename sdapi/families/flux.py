"""FLUX.1 (Black Forest Labs): a flow-matching transformer with double- and single-stream blocks, CLIP-L (pooled)
and T5-XXL text encoders. [dev] is guidance-distilled: guidance_scale is a value the transformer embeds (one pass a
step, no negative prompt); [schnell] is timestep-distilled: 1-4 steps, no guidance at all. Which one a model is, its
transformer config says (`guidance_embeds`). FLUX.1 Fill is its inpainting checkpoint (FluxFillPipeline: the
transformer sees the mask and the masked image): every request on it runs as a repaint, as on SD's. optimum exports
it and serves text-to-image; its edits run on torch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sdapi.families.base import RunDefaults
from sdapi.families.flow import FLUX_CACHE_FIELDS, one_unit_controlnet, transformer_family


def _spatial_latents(pipeline: Any, latents: Any, size: tuple[int, int]) -> Any:
    """FLUX.1's latents are packed 2x2 cells as tokens: unpacked as its pipelines do before decoding."""
    return pipeline._unpack_latents(latents, size[1], size[0], pipeline.vae_scale_factor)


def _guidance(transformer: Mapping[str, Any], index: Mapping[str, Any]) -> str:
    return "embedded" if transformer.get("guidance_embeds") else "distilled"


FLUX = transformer_family(
    name="flux",
    label="FLUX.1",
    **FLUX_CACHE_FIELDS,
    addon_group="flux",
    addon_group_label="FLUX.1",
    text_to_image="FluxPipeline",
    inpainting="FluxFillPipeline",  # FLUX.1 Fill, its inpainting checkpoint
    image_to_image_pipeline="FluxImg2ImgPipeline",
    inpainting_pipeline="FluxInpaintPipeline",
    onnx_pipelines=("ORTFluxPipeline", "", ""),
    onnx_parts=("text_encoder", "text_encoder_2", "transformer", "vae_encoder", "vae_decoder"),
    text_encoders=("text_encoder", "text_encoder_2"),
    tokenizers=("tokenizer", "tokenizer_2"),
    text_encoder_classes=("CLIPTextModel", "T5EncoderModel"),
    lora_markers=("_proj_mlp",),
    takes_negative_prompt=False,
    guidance="embedded",
    guidance_of=_guidance,
    defaults={"embedded": RunDefaults(28, 3.5), "distilled": RunDefaults(4, 0.0)},
    controlnet=one_unit_controlnet("FluxControlNetModel", "FluxControlNetPipeline"),
    spatial_latents_of=_spatial_latents,
)
