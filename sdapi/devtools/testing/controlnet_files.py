"""Tiny ControlNets for the tiny models: diffusers' ControlNetModel.from_unet, with the zero-initialised layers
(the residual projections and the conditioning embedding's last conv) given small seeded random weights, so a unit
really changes the picture, written as a diffusers folder or a single .safetensors file."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from safetensors.torch import save_file


def tiny_controlnet(model_dir: Path, seed: int = 0) -> ControlNetModel:
    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16))
    generator = torch.Generator().manual_seed(seed)
    zeroed = [
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
        controlnet.controlnet_cond_embedding.conv_out,
    ]
    with torch.no_grad():
        for module in zeroed:
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.05)
            module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.05)
    return controlnet.eval()


def write_controlnet(path: Path, controlnet: ControlNetModel, single_file: bool = False) -> Path:
    """A diffusers folder at `path`, or (single_file) `path` as one .safetensors in diffusers' key layout."""
    if single_file:
        save_file({key: value.contiguous() for key, value in controlnet.state_dict().items()}, str(path))
    else:
        controlnet.save_pretrained(str(path), safe_serialization=True)
    return path
