"""Model families: everything that differs between SD 1.x, SD 2.x, SDXL, SD 3.x, FLUX.1, FLUX.2 [klein] and Z-Image
(how a model is recognised, its pipelines per kind of run, its text encoders, native size, guidance, defaults,
schedulers, LoRA key layout, embedding widths, ControlNet and IP-Adapter compatibility, ONNX export parts, tiny
builders) lives in one module per family (sd1.py, sd2.py, sdxl.py, sd3.py, flux.py, flux2_klein.py, z_image.py);
detection.py recognises a model on disk, tiny.py and tiny_transformers.py build a random tiny model of each. Outside
this package no code names a family or tests a family flag: it asks the family. A new family is one module and one
line in FAMILIES."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sdapi.families.base import Family, ModelFamily
from sdapi.families.flux import FLUX
from sdapi.families.flux2_klein import FLUX2_KLEIN
from sdapi.families.sd1 import SD1
from sdapi.families.sd2 import SD2
from sdapi.families.sd3 import SD3
from sdapi.families.sdxl import SDXL, SDXL_LORA_MARKERS
from sdapi.families.z_image import Z_IMAGE

# Every family served, in the order detection asks them.
FAMILIES: tuple[Family, ...] = (SDXL, SD2, SD1, SD3, FLUX, FLUX2_KLEIN, Z_IMAGE)
# The families whose denoiser is a UNet, told apart by its config (family_of_unet); the others by pipeline class.
UNET_FAMILIES: tuple[Family, ...] = tuple(family for family in FAMILIES if family.denoiser == "unet")
TRANSFORMER_FAMILIES: tuple[Family, ...] = tuple(family for family in FAMILIES if family not in UNET_FAMILIES)
_BY_NAME = {family.name: family for family in FAMILIES}
# The tiny random architectures `make-tiny-model --family` builds (tiny.py, tiny_transformers.py): a family's layout,
# some with a variant (v-prediction, an inpainting checkpoint's 9-channel UNet, FLUX.1 [dev]'s embedded guidance,
# FLUX.1 Fill's inpainting transformer).
TINY_VARIANTS = (
    "sd15",
    "sd2-v",
    "sdxl",
    "sd15-inpaint",
    "sdxl-inpaint",
    SD3.name,
    FLUX.name,
    "flux-dev",
    "flux-fill",
    FLUX2_KLEIN.name,
    Z_IMAGE.name,
)
DEFAULT_TINY_VARIANT = TINY_VARIANTS[0]
# The text encoders a pipeline may have, by the pipeline's names for them, first first.
TEXT_ENCODER_PARTS: tuple[str, ...] = max((family.text_encoders for family in FAMILIES), key=len)
# The modules adapters may change, over every family (a UNet or a transformer, then the text encoders).
ADAPTER_PARTS: tuple[str, ...] = tuple(dict.fromkeys(part for family in FAMILIES for part in family.adapter_parts))

__all__ = [
    "ADAPTER_PARTS",
    "DEFAULT_TINY_VARIANT",
    "FAMILIES",
    "FLUX",
    "FLUX2_KLEIN",
    "SD1",
    "SD2",
    "SD3",
    "SDXL",
    "TEXT_ENCODER_PARTS",
    "TINY_VARIANTS",
    "TRANSFORMER_FAMILIES",
    "UNET_FAMILIES",
    "Z_IMAGE",
    "Family",
    "ModelFamily",
    "family_named",
    "family_of_controlnet_class",
    "family_of_embedding_widths",
    "family_of_lora_keys",
    "family_of_pipeline",
    "family_of_pipeline_class",
    "family_of_text_width",
    "family_of_unet",
]


def family_named(name: str) -> Family:
    """The family called `name` (sd1, sd2, sdxl, sd3, flux...); KeyError for another name."""
    return _BY_NAME[name]


def family_of_pipeline_class(name: str) -> Family | None:
    """The transformer family a diffusers (or optimum ONNX Runtime) pipeline class belongs to (the UNet families
    share classes: their UNet's config tells them apart, family_of_unet); None for another class."""
    return next((f for f in TRANSFORMER_FAMILIES if name in f.pipeline_names or name in f.onnx_pipelines), None)


def family_of_controlnet_class(name: str) -> Family | None:
    """The transformer family whose ControlNets are of diffusers' class `name` (SD's ControlNetModel is told apart
    by its config: family_of_unet); None for another class."""
    controlled = (f for f in TRANSFORMER_FAMILIES if f.controlnet is not None)
    return next((f for f in controlled if f.controlnet is not None and f.controlnet.model_class == name), None)


def guidance_of(family: Family, transformer: Mapping[str, Any], index: Mapping[str, Any]) -> str:
    """How a model of `family` uses guidance, from its transformer config and model_index.json."""
    return family.guidance_of(transformer, index) if family.guidance_of is not None else family.guidance


def family_of_unet(config: Mapping[str, object], *, pooled_text: bool | None = None) -> Family:
    """The family of a UNet (or a ControlNet, which copies its UNet's config): SDXL when it takes the pooled text
    and size embedding (`pooled_text`, else its `addition_embed_type`); else SD 2.x when it projects attention
    linearly or cross-attends 1024-wide text (OpenCLIP); SD 1.x otherwise."""
    if pooled_text if pooled_text is not None else config.get("addition_embed_type") == "text_time":
        return SDXL
    if config.get("use_linear_projection") or config.get("cross_attention_dim") == 1024:
        return SD2
    return SD1


def family_of_text_width(width: int | None) -> Family:
    """The SD 1.x/2.x family whose text a width belongs to: 1024 (OpenCLIP) is SD 2.x; anything else is taken for
    SD 1.x (a tiny test model's widths included), as a model that cannot be told apart is."""
    return SD2 if width == 1024 else SD1


def family_of_lora_keys(keys: Iterable[str], text_width: int | None) -> Family | None:
    """The family a LoRA file (module keys in kohya naming) was made for: SDXL by its names, else by the width of
    its text-encoder modules; a transformer family's by the markers only its files have, else None (their module
    names overlap: a file's shapes tell which model it fits)."""
    keys = list(keys)
    if any(key.startswith(tuple(f.kohya_prefixes[f.denoiser] for f in TRANSFORMER_FAMILIES)) for key in keys):
        marked = [f for f in TRANSFORMER_FAMILIES if any(marker in key for key in keys for marker in f.lora_markers)]
        return marked[0] if len(marked) == 1 else None
    if any(key.startswith(SDXL_LORA_MARKERS) for key in keys):
        return SDXL
    return family_of_text_width(text_width)


def family_of_embedding_widths(widths: tuple[int, ...]) -> Family | None:
    """The family whose text encoders an embedding's vectors fit, by width; None for other widths."""
    return next((family for family in FAMILIES if family.embedding_widths == widths), None)


def family_of_pipeline(pipeline: Any, guidance: str | None = None) -> ModelFamily:
    """A loaded pipeline's family, read from its own modules (a single file's SD 2.x prediction type and native
    size are only known here); `guidance`: the model config's word on it, over what the files say."""
    transformer_family = family_of_pipeline_class(type(pipeline).__name__)
    if transformer_family is not None:
        denoiser = getattr(pipeline, transformer_family.denoiser)
        index = dict(getattr(pipeline, "config", {}))
        side = transformer_family.native_side
        return ModelFamily(
            family=transformer_family,
            native_size=(side, side),
            prediction="flow",
            inpainting=transformer_family.has_inpainting_checkpoints
            and type(pipeline).__name__ == transformer_family.inpainting,
            guidance=guidance or guidance_of(transformer_family, dict(denoiser.config), index),
        )
    unet = pipeline.unet
    pooled = getattr(pipeline, SDXL.text_encoders[-1], None) is not None  # SDXL's second, pooled text encoder
    family = family_of_unet(unet.config, pooled_text=pooled)
    sample_size = unet.config.get("sample_size")
    side = int(sample_size) * 8 if isinstance(sample_size, int) else family.native_side
    prediction = str(pipeline.scheduler.config.get("prediction_type"))
    inpainting = unet.config.get("in_channels", 4) == 9
    return ModelFamily(family=family, native_size=(side, side), prediction=prediction, inpainting=inpainting)
