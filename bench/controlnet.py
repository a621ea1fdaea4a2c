"""The cost of one ControlNet unit per denoising step against the bare UNet (part of `make bench-engines`).

For the tiny model and for SD 1.5's full architecture (random weights, built offline as bench.engines does), a
512x512 latent at batch 2 (classifier-free guidance) in fp32 on this machine's device: the UNet's step alone, then
the ControlNet's forward plus the UNet taking its residuals, each the median of several steps after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bench.machine import describe_machine


def _median_seconds(step, repeats: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        step()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def measure(unet, repeats: int, side: int = 512) -> dict[str, float]:
    from diffusers import ControlNetModel

    controlnet = ControlNetModel.from_unet(unet).eval()
    latents = torch.randn(2, unet.config.in_channels, side // 8, side // 8)
    text = torch.randn(2, 77, unet.config.cross_attention_dim)
    control = torch.rand(2, 3, side, side)
    timestep = torch.tensor([500])

    def bare() -> None:
        unet(latents, timestep, encoder_hidden_states=text)

    def with_unit() -> None:
        down, mid = controlnet(
            latents, timestep, encoder_hidden_states=text, controlnet_cond=control, return_dict=False
        )
        unet(
            latents,
            timestep,
            encoder_hidden_states=text,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        )

    with torch.inference_mode():
        plain, controlled = _median_seconds(bare, repeats), _median_seconds(with_unit, repeats)
    return {"unet_step_s": plain, "with_one_unit_s": controlled, "ratio": controlled / plain}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("data/bench"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-sd15", action="store_true", help="the tiny model only")
    arguments = parser.parse_args()
    from diffusers import UNet2DConditionModel

    from bench.engines import build_sd15_random
    from sdapi.families.tiny import make_tiny_model

    arguments.workdir.mkdir(parents=True, exist_ok=True)
    models = {"tiny": make_tiny_model(arguments.workdir / "tiny-controlnet-bench")}
    if not arguments.skip_sd15:
        models["sd15-architecture"] = build_sd15_random(arguments.workdir / "sd15-random")
    figures = {"machine": describe_machine()}
    for name, folder in models.items():
        unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
        figures[name] = measure(unet, arguments.repeats)
        print(name, json.dumps(figures[name]), flush=True)  # each figure as soon as it exists
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
