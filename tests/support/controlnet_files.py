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


def write_transformer_controlnet(model_dir: Path, family: str, folder: Path, seed: int = 0) -> Path:
    """A tiny ControlNet of a transformer family (sd3, flux, z-image) for the tiny model at `model_dir`, its weights
    seeded random (scaled so a unit changes the picture), as a diffusers folder. Z-Image's holds only its control
    layers (the base transformer lends it the rest when it loads)."""
    import diffusers

    torch.manual_seed(seed)
    if family == "z-image":
        controlnet = diffusers.ZImageControlNetModel(
            control_layers_places=[0],
            control_refiner_layers_places=[0],
            control_in_dim=16,
            all_patch_size=(2,),
            all_f_patch_size=(1,),
            dim=32,
            n_refiner_layers=1,
            n_heads=2,
            n_kv_heads=2,
        )
    else:
        transformer_class = diffusers.SD3Transformer2DModel if family == "sd3" else diffusers.FluxTransformer2DModel
        transformer = transformer_class.from_pretrained(model_dir / "transformer")
        if family == "sd3":
            controlnet = diffusers.SD3ControlNetModel.from_transformer(
                transformer, num_layers=1, num_extra_conditioning_channels=0, load_weights_from_transformer=False
            )
        else:
            controlnet = diffusers.FluxControlNetModel.from_transformer(
                transformer,
                num_layers=1,
                num_single_layers=1,
                attention_head_dim=16,
                num_attention_heads=2,
                load_weights_from_transformer=False,
            )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in controlnet.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    controlnet.save_pretrained(str(folder), safe_serialization=True)
    return folder
