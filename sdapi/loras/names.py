"""How kohya names a model's modules in LoRA files: a prefix per part and the diffusers module path with its dots
turned into underscores (SDXL files also use the UNet's original block names: sgm_names.py). Pure: no torch, so an
API node can name a model's modules from its files alone (targets.py)."""

from __future__ import annotations

KOHYA_UNET_PREFIX = "lora_unet_"
KOHYA_TEXT_ENCODER_PREFIX = "lora_te_"
# kohya's prefixes for each part: SDXL files name the two text encoders lora_te1_ and lora_te2_.
KOHYA_PREFIXES = {"unet": KOHYA_UNET_PREFIX, "text_encoder": KOHYA_TEXT_ENCODER_PREFIX, "text_encoder_2": "lora_te2_"}


def kohya_module_key(part: str, module_path: str) -> str:
    """kohya's name for a diffusers module: ("unet", "down_blocks.0.attentions.0.proj_in") -> "lora_unet_down_..."."""
    return KOHYA_PREFIXES[part] + module_path.replace(".", "_")
