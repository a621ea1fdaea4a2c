"""How kohya names a model's modules in LoRA files: a prefix per part and the diffusers module path with its dots
turned into underscores (each family says which parts it has and what second names its files use:
sdapi.families). Pure: no torch, so an API node can name a model's modules from its files alone (targets.py)."""

from __future__ import annotations

from sdapi.families import FAMILIES

# kohya's prefix for each part's modules, over every family (a part has the same prefix in each that has it).
KOHYA_PREFIXES = {part: prefix for family in FAMILIES for part, prefix in family.kohya_prefixes.items()}
KOHYA_UNET_PREFIX = KOHYA_PREFIXES["unet"]


def kohya_module_key(part: str, module_path: str) -> str:
    """kohya's name for a diffusers module: ("unet", "down_blocks.0.attentions.0.proj_in") -> "lora_unet_down_..."."""
    return KOHYA_PREFIXES[part] + module_path.replace(".", "_")
