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


def write_tiny_depth_model(folder: Path) -> Path:
    """A tiny DPT depth-estimation model with its image processor at `folder` (what controlnet.annotators_dir/depth
    holds), seeded random: the depth preprocessor runs through transformers' pipeline as with a real one."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(0)
    config = DPTConfig(
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 8, 8, 8],
        fusion_hidden_size=8,
        reassemble_factors=[4, 2, 1, 0.5],
        head_in_index=-1,
    )
    DPTForDepthEstimation(config).save_pretrained(str(folder))
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(str(folder))
    return folder
