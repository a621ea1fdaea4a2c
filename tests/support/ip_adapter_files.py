"""A tiny IP-Adapter for a tiny model, laid out as the published IP-Adapter repositories are: the adapter's
.safetensors (image_proj.* and ip_adapter.* keys) with an image_encoder/ folder (a tiny CLIPVisionModelWithProjection)
beside it. The weights are seeded random: an image prompt changes the picture, weight 0 leaves it alone."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

IMAGE_EMBEDDINGS = 16  # the tiny image encoder's projection width


def write_tiny_ip_adapter(folder: Path, model_dir: Path, name: str = "tiny-ip", seed: int = 0) -> Path:
    """`folder`/`name`.safetensors and `folder`/image_encoder for the model at `model_dir`; returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
            projection_dim=IMAGE_EMBEDDINGS,
        )
    )
    if not (folder / "image_encoder" / "config.json").is_file():
        encoder.save_pretrained(str(folder / "image_encoder"), safe_serialization=True)
    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
    width = int(unet.config.cross_attention_dim)
    generator = torch.Generator().manual_seed(seed)

    def random(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.2

    tensors = {
        "image_proj.proj.weight": random(width * 4, IMAGE_EMBEDDINGS),
        "image_proj.proj.bias": random(width * 4),
        "image_proj.norm.weight": torch.ones(width),
        "image_proj.norm.bias": torch.zeros(width),
    }
    # diffusers numbers the cross-attention processors 1, 3, 5, … in the UNet's processor order.
    key = 1
    for processor in unet.attn_processors:
        if processor.endswith("attn1.processor"):
            continue
        attention = unet.get_submodule(processor.removesuffix(".processor"))
        hidden = int(attention.to_q.out_features)
        tensors[f"ip_adapter.{key}.to_k_ip.weight"] = random(hidden, width)
        tensors[f"ip_adapter.{key}.to_v_ip.weight"] = random(hidden, width)
        key += 2
    path = folder / f"{name}.safetensors"
    save_file(tensors, str(path))
    return path
