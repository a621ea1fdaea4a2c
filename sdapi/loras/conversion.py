"""LoRA files of the transformer families in the layouts their trainers write (kohya's `lora_unet_...` names for a
transformer, ComfyUI's and ai-toolkit's `diffusion_model.` prefix, BFL's own names) turned into diffusers' PEFT
layout by diffusers' own converters (each pipeline's `lora_state_dict`), so the rest of sdapi reads one layout. A
file already in a layout sdapi reads (kohya names of a UNet or text encoder, PEFT keys of any part) is left as is."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import torch

from sdapi.families import TRANSFORMER_FAMILIES

logger = logging.getLogger(__name__)

# kohya's names of a UNet's modules (diffusers' block names, or the original SGM ones); a `lora_unet_` key naming
# anything else names a transformer's module.
_UNET_MODULE = re.compile(
    r"^lora_unet_(down_blocks|up_blocks|mid_block|input_blocks|output_blocks|middle_block|conv_in|conv_out|"
    r"time_embedding|add_embedding|time_embed|label_emb|out_)"
)
_PEFT_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".alpha")


def needs_conversion(keys: Mapping[str, object]) -> bool:
    """Whether a file's keys are a transformer's in a layout sdapi does not read itself: kohya names that are no
    UNet's, or keys under `diffusion_model.` / BFL's block names."""
    for key in keys:
        if key.startswith("lora_unet_") and not _UNET_MODULE.match(key):
            return True
        if key.startswith(("diffusion_model.", "double_blocks.", "single_blocks.")):
            return True
    return False


def to_peft_layout(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The file's tensors in diffusers' PEFT layout (`transformer.<module>.lora_A.weight`...), converted by the
    first transformer family whose diffusers converter takes them whole; None when none does."""
    import diffusers

    for family in TRANSFORMER_FAMILIES:
        loader = getattr(diffusers, family.text_to_image)
        try:
            converted = loader.lora_state_dict(dict(tensors))
        except Exception as error:  # each converter asserts its own layout and sizes: not this family's file
            logger.debug("%s's LoRA converter does not take the file: %s", family.label, error)
            continue
        if isinstance(converted, tuple):  # (state dict, alphas) from some loaders
            converted = converted[0]
        prefix = family.denoiser + "."
        if converted and all(key.startswith(prefix) and key.endswith(_PEFT_SUFFIXES) for key in converted):
            return dict(converted)
    return None
