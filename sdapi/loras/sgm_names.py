"""The original (SGM/LDM) names of a diffusers UNet's modules, which kohya-ss writes SDXL LoRAs with:
`input_blocks.4.1.transformer_blocks.0.attn1.to_q` for diffusers' `down_blocks.1.attentions.0.transformer_blocks.0
.attn1.to_q`. Derived from the UNet's own structure (blocks, layers per block, which blocks have attention), so it
holds for any UNet in that layout, SDXL's and the tiny test model's alike."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

# ResnetBlock2D's modules under their original names.
_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_FIXED = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)(?:\.(.*))?$")
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)(?:\.(.*))?$")


def _resnet_inner(rest: str | None) -> str | None:
    if not rest:
        return None
    head, _, tail = rest.partition(".")
    renamed = _RESNET.get(head)
    if renamed is None:
        return None
    return f"{renamed}.{tail}" if tail else renamed


class UnetLayout(NamedTuple):
    """What the names depend on: resnets per down block, and which up blocks have attention (their upsampler's
    index follows the attention). Read from the UNet's config, so a model on disk needs no torch to be named."""

    layers_per_block: int
    up_blocks_with_attention: tuple[bool, ...]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> UnetLayout:
        up_types = config.get("up_block_types") or ()
        return cls(int(config["layers_per_block"]), tuple("Attn" in str(kind) for kind in up_types))


def sgm_name(layout: UnetLayout, path: str) -> str | None:
    """The original name of the UNet module at diffusers `path`, or None when it has none."""
    if path in _FIXED:
        return _FIXED[path]
    per_block = layout.layers_per_block
    found = _BLOCK.match(path)
    if found is not None:
        direction, block, kind, index, rest = found[1], int(found[2]), found[3], int(found[4]), found[5]
        if direction == "down_blocks":
            base = 1 + block * (per_block + 1)
            if kind == "downsamplers":
                return f"input_blocks.{base + per_block}.0.op" if rest == "conv" else None
            prefix = "input_blocks"
        else:
            base = block * (per_block + 1)
            if kind == "upsamplers":
                has_attention = layout.up_blocks_with_attention[block]
                return f"output_blocks.{base + per_block}.{2 if has_attention else 1}.conv" if rest == "conv" else None
            prefix = "output_blocks"
        if kind == "resnets":
            inner = _resnet_inner(rest)
            return f"{prefix}.{base + index}.0.{inner}" if inner else None
        return f"{prefix}.{base + index}.1" + (f".{rest}" if rest else "")
    found = _MID.match(path)
    if found is not None:
        kind, index, rest = found[1], int(found[2]), found[3]
        if kind == "attentions":
            return "middle_block.1" + (f".{rest}" if rest else "")
        inner = _resnet_inner(rest)
        return f"middle_block.{2 * index}.{inner}" if inner else None
    return None
