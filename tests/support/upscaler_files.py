"""Tiny random ESRGAN-family upscalers (RRDBNet) in the layouts people ship: BasicSR's (Real-ESRGAN, wrapped in
params_ema as its .pth files are) and the original ESRGAN repository's, as .pth or .safetensors."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from sdapi.upscalers.rrdb import RRDBNet


def tiny_rrdb(scale: int = 4, width: int = 8, blocks: int = 1, growth: int = 4, seed: int = 0) -> RRDBNet:
    """A random RRDBNet: 4x (plain input) or 2x (Real-ESRGAN x2plus: the input folded by pixel-unshuffle)."""
    torch.manual_seed(seed)
    network = RRDBNet(3 if scale == 4 else 12, 3, width, blocks, growth, ups=2)
    for parameter in network.parameters():  # small weights: a picture in, a picture (not saturated) out
        parameter.data.mul_(0.3)
    network.eval()
    return network


def old_layout(state: dict[str, torch.Tensor], blocks: int) -> dict[str, torch.Tensor]:
    """BasicSR's names as the original ESRGAN repository's (4x: model.3, model.6 up, model.8 hr, model.10 last)."""
    names = {"conv_first": "model.0", "conv_body": f"model.1.sub.{blocks}", "conv_up1": "model.3"}
    names |= {"conv_up2": "model.6", "conv_hr": "model.8", "conv_last": "model.10"}
    renamed = {}
    for key, value in state.items():
        module, kind = key.rsplit(".", 1)
        if module.startswith("body."):
            _, block, rdb, conv = module.split(".")
            renamed[f"model.1.sub.{block}.RDB{rdb[-1]}.{conv}.0.{kind}"] = value
        else:
            renamed[f"{names[module]}.{kind}"] = value
    return renamed


def write_rrdb(path: Path, network: RRDBNet, layout: str = "basicsr") -> Path:
    """Save `network` at `path` (.pth or .safetensors) in `layout` (basicsr | esrgan)."""
    state = {key: value.detach().contiguous() for key, value in network.state_dict().items()}
    if layout == "esrgan":
        state = old_layout(state, len(network.body))
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"params_ema": state} if layout == "basicsr" else state, path)
    return path
