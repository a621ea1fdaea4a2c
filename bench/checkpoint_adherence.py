"""Score a training run's UNet checkpoint while it trains: a quick look at prompt adherence, no service.

    python -m bench.checkpoint_adherence --workdir data/train-scenes [--prompts 30] [--size 256]

Builds a pipeline in memory from the work folder's latest UNet checkpoint (its moving averages) or its final
weights, renders the first `--prompts` of `make bench-adherence`'s held-out prompts with 2 seeds, 20 steps, CFG 7.5,
and prints the accuracy per attribute. It shares the cores with the training, so run it with few prompts; the
figures that count come from `make bench-adherence` on the exported model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.adherence import SCORED, held_out_prompts
from sdapi.devtools import scene_stats
from sdapi.devtools import train_scenes as training


def pipeline_from_workdir(workdir: Path):  # type: ignore[no-untyped-def]
    import diffusers
    import torch
    from diffusers import AutoencoderKL

    from sdapi.devtools.tiny_model import SD15_SCHEDULER_CONFIG

    final = workdir / "unet_final.pt"
    if final.exists():
        state = torch.load(final)
        unet_state, text_state, vocab_size, step = state["unet"], state["text"], state["vocab_size"], "final"
    else:
        state = torch.load(workdir / "unet_checkpoint.pt", weights_only=False)
        text = torch.load(workdir / "text_encoder.pt")
        unet_state, text_state, vocab_size, step = state["ema_unet"], text["text"], text["vocab_size"], state["step"]
    unet, text_encoder = training._unet(), training._text_encoder(vocab_size)
    unet.load_state_dict(unet_state)
    text_encoder.load_state_dict(text_state)
    vae = AutoencoderKL.from_pretrained(str(workdir / "vae"))
    vae.register_to_config(scaling_factor=float(torch.load(workdir / "latents.pt")["scaling_factor"]))
    pipeline = diffusers.StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=training._tokenizer(workdir / "tokenizer"),
        unet=unet,
        scheduler=diffusers.PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline, step


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("data/train-scenes"))
    parser.add_argument("--prompts", type=int, default=30)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    pipeline, step = pipeline_from_workdir(arguments.workdir)
    scorer = scene_stats.calibrated_scorer(count=600)
    hits: dict[str, list[bool]] = {attribute: [] for attribute in SCORED}
    for index, (prompt, scene) in enumerate(held_out_prompts(arguments.prompts)):
        with torch.no_grad():
            images = pipeline(
                prompt,
                width=arguments.size,
                height=arguments.size,
                num_inference_steps=20,
                guidance_scale=7.5,
                num_images_per_prompt=2,
                generator=torch.Generator().manual_seed(1000 * index),
            ).images
        for image in images:
            predicted = scorer.predict(image)
            for attribute in SCORED:
                hits[attribute].append(predicted[attribute] == getattr(scene, attribute))
    figures = ", ".join(f"{attribute} {100 * np.mean(values):.0f} %" for attribute, values in hits.items())
    print(f"step {step}, {arguments.prompts} prompts x 2 seeds at {arguments.size}x{arguments.size}: {figures}")


if __name__ == "__main__":
    main()
