"""VAE files for the VAE library's tests: the tiny model's VAE architecture with other weights (seeded), as a
diffusers folder or as a single .safetensors file of diffusers' tensor names; and one of another latent width."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file


def other_vae(model: Path, seed: int, latent_channels: int | None = None) -> AutoencoderKL:
    config = dict(AutoencoderKL.load_config(model / "vae"))
    if latent_channels is not None:
        config["latent_channels"] = latent_channels
    torch.manual_seed(seed)
    return AutoencoderKL.from_config(config)


def write_vae_folder(model: Path, target: Path, seed: int, latent_channels: int | None = None) -> Path:
    other_vae(model, seed, latent_channels).save_pretrained(target)
    return target


def write_vae_file(model: Path, target: Path, seed: int) -> Path:
    save_file({name: tensor.contiguous() for name, tensor in other_vae(model, seed).state_dict().items()}, target)
    return target
