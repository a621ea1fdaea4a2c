"""FLUX.2 [klein] (Black Forest Labs): a small FLUX.2 transformer with one Qwen3 text encoder (its hidden states at
three depths side by side) and FLUX.2's 32-channel VAE. The released [klein] models are step-distilled (4 steps, no
guidance: model_index.json's `is_distilled`); the base ones use classifier-free guidance against an empty prompt,
since the pipeline takes no negative prompt. diffusers has no strength-based image-to-image pipeline for it: an
image-to-image request runs as a repaint of the whole picture on its inpainting pipeline (the same thing). No
ControlNet, no ONNX (optimum cannot export it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sdapi.families.base import RunDefaults
from sdapi.families.flow import FLUX_CACHE_FIELDS, transformer_family


def _spatial_latents(pipeline: Any, latents: Any, size: tuple[int, int]) -> Any:
    """FLUX.2's latents are tokens of patchified, normalised 2x2 cells in row order: back to that grid (its
    pipelines' own unpacking scatters by position ids, which for a plain picture are this order)."""
    if latents.ndim == 4:
        return latents
    cells = pipeline.vae_scale_factor * 2
    rows, columns = size[1] // cells, size[0] // cells
    return latents.reshape(latents.shape[0], rows, columns, latents.shape[-1]).permute(0, 3, 1, 2)


def _pixel_latents(pipeline: Any, pixels: Any) -> Any:
    """Pixels into that grid the way its image-to-image encodes its reference: patchified and normalised."""
    parameter = next(iter(pipeline.vae.parameters()))
    return pipeline._encode_vae_image(pixels.to(device=parameter.device, dtype=parameter.dtype), generator=None)


def _guidance(transformer: Mapping[str, Any], index: Mapping[str, Any]) -> str:
    return "distilled" if index.get("is_distilled") else "cfg"


FLUX2_KLEIN = transformer_family(
    name="flux2-klein",
    label="FLUX.2 [klein]",
    **FLUX_CACHE_FIELDS,
    # Its pipelines un-normalise the latents with the VAE's batch-norm statistics and unpack them before the VAE:
    # a tiny decoder would need that space, and none is published for it.
    tiny_decoder=False,
    addon_group="flux2-klein",
    addon_group_label="FLUX.2 [klein]",
    text_to_image="Flux2KleinPipeline",
    inpainting="Flux2KleinInpaintPipeline",  # no inpainting checkpoint: the ordinary inpainting pipeline
    inpainting_pipeline="Flux2KleinInpaintPipeline",
    repaints_for_image_to_image=True,
    text_encoders=("text_encoder",),
    tokenizers=("tokenizer",),
    text_encoder_classes=("Qwen3ForCausalLM",),
    lora_markers=("_to_qkv_mlp_proj",),
    takes_negative_prompt=False,
    guidance="distilled",
    guidance_of=_guidance,
    defaults={"distilled": RunDefaults(4, 1.0), "cfg": RunDefaults(50, 4.0)},
    single_files=False,
    latent_channels=32,
    spatial_latents_of=_spatial_latents,
    pixel_latents_of=_pixel_latents,
)
