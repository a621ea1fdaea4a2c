"""Model families: everything that differs between SD 1.x, SD 2.x and SDXL (how a model is recognised, its
pipelines per kind of run, its text encoders, native size, LoRA key layout, embedding widths, ControlNet and
IP-Adapter compatibility, ONNX export parts, tiny builders) lives in one module per family (sd1.py, sd2.py,
sdxl.py); detection.py recognises a model on disk, tiny.py builds a random tiny model of each. Outside this package
no code names a family or tests a family flag: it asks the family. A new family is one module and one line in
FAMILIES."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sdapi.families.base import Family, ModelFamily
from sdapi.families.sd1 import SD1
from sdapi.families.sd2 import SD2
from sdapi.families.sdxl import SDXL, SDXL_LORA_MARKERS

# Every family served, in the order detection asks them.
FAMILIES: tuple[Family, ...] = (SDXL, SD2, SD1)
_BY_NAME = {family.name: family for family in FAMILIES}
# The tiny random architectures `make-tiny-model --family` builds (tiny.py): a family's layout, some with a variant
# (v-prediction, an inpainting checkpoint's 9-channel UNet).
TINY_VARIANTS = ("sd15", "sd2-v", "sdxl", "sd15-inpaint", "sdxl-inpaint")
DEFAULT_TINY_VARIANT = TINY_VARIANTS[0]
# The text encoders a pipeline may have, by the pipeline's names for them, first first.
TEXT_ENCODER_PARTS: tuple[str, ...] = max((family.text_encoders for family in FAMILIES), key=len)

__all__ = [
    "DEFAULT_TINY_VARIANT",
    "FAMILIES",
    "SD1",
    "SD2",
    "SDXL",
    "TEXT_ENCODER_PARTS",
    "TINY_VARIANTS",
    "Family",
    "ModelFamily",
    "family_named",
    "family_of_embedding_widths",
    "family_of_lora_keys",
    "family_of_pipeline",
    "family_of_text_width",
    "family_of_unet",
]


def family_named(name: str) -> Family:
    """The family called `name` (sd1, sd2, sdxl); KeyError for another name."""
    return _BY_NAME[name]


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


def family_of_lora_keys(keys: Iterable[str], text_width: int | None) -> Family:
    """The family a LoRA file (module keys in kohya naming) was made for: SDXL by its names, else by the width of
    its text-encoder modules."""
    if any(key.startswith(SDXL_LORA_MARKERS) for key in keys):
        return SDXL
    return family_of_text_width(text_width)


def family_of_embedding_widths(widths: tuple[int, ...]) -> Family | None:
    """The family whose text encoders an embedding's vectors fit, by width; None for other widths."""
    return next((family for family in FAMILIES if family.embedding_widths == widths), None)


def family_of_pipeline(pipeline: Any) -> ModelFamily:
    """A loaded pipeline's family, read from its own modules (a single file's SD 2.x prediction type and native
    size are only known here)."""
    unet = pipeline.unet
    pooled = getattr(pipeline, SDXL.text_encoders[-1], None) is not None  # SDXL's second, pooled text encoder
    family = family_of_unet(unet.config, pooled_text=pooled)
    sample_size = unet.config.get("sample_size")
    side = int(sample_size) * 8 if isinstance(sample_size, int) else family.native_side
    prediction = str(pipeline.scheduler.config.get("prediction_type"))
    inpainting = unet.config.get("in_channels", 4) == 9
    return ModelFamily(family=family, native_size=(side, side), prediction=prediction, inpainting=inpainting)
