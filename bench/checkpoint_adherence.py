"""Score a training run's UNet checkpoint while it trains: a quick look at prompt adherence, no service.

    python -m bench.checkpoint_adherence --workdir data/train-scenes [--prompts 30] [--size 256]
    python -m bench.checkpoint_adherence --reconstructions data/train-scenes/vae_decoder

Builds a pipeline in memory from the work folder's latest UNet checkpoint (its moving averages) or its final
weights, renders the first `--prompts` of `make bench-adherence`'s held-out prompts with 2 seeds, 20 steps, CFG 7.5,
and prints the accuracy per attribute. It shares the cores with the training, so run it with few prompts; the
figures that count come from `make bench-adherence` on the exported model. Each accuracy is also given per time
of day (night scenes are the hard ones).

`--reconstructions VAE_FOLDER` scores instead rendered scenes encoded and decoded by that VAE, per time of day,
beside the renders themselves: no UNet can draw an attribute better than its VAE gives it back (the decoder stage
of training.train_scenes came from this measurement).
"""

from __future__ import annotations

import argparse
import random
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench.adherence import SCORED, held_out_prompts
from training import scene_stats, scenes
from training import train_scenes as training


def pipeline_from_workdir(workdir: Path):  # type: ignore[no-untyped-def]
    import diffusers
    import torch
    from diffusers import AutoencoderKL

    from sdapi.families.tiny import SD15_SCHEDULER_CONFIG

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
    vae = AutoencoderKL.from_pretrained(str(workdir / "vae_decoder"))  # the decoder stage runs before the UNet's
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


def _report(title: str, hits: dict[tuple[str, str], list[bool]]) -> None:
    """One line per scored attribute: the accuracy over all pictures, then per time of day."""
    print(title)
    for attribute in SCORED:
        per_time = {time: hits[(time, attribute)] for time in scenes.TIMES if hits[(time, attribute)]}
        every = [hit for values in per_time.values() for hit in values]
        detail = ", ".join(f"{time} {100 * np.mean(values):.0f} %" for time, values in per_time.items())
        print(f"  {attribute}: {100 * np.mean(every):.0f} % ({detail})")


def reconstruction_ceiling(vae_folder: Path, count: int) -> None:
    """Score `count` rendered landscapes and their round trips through the VAE at `vae_folder`."""
    import torch
    from diffusers import AutoencoderKL
    from PIL import Image

    vae = AutoencoderKL.from_pretrained(str(vae_folder)).eval()
    scorer = scene_stats.calibrated_scorer(count=600)
    rng = random.Random(4242)  # neither a training nor a calibration seed
    renders: dict[tuple[str, str], list[bool]] = defaultdict(list)
    decoded: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for index in range(count):
        scene = scenes.random_scene(rng, object_share=0.0)
        assert isinstance(scene, scenes.Landscape)
        image = scenes.render(scene, 256, 99 + index)
        pixels = training._to_tensor(np.array(image)[None])  # a writable copy: torch.from_numpy warns otherwise
        with torch.no_grad():
            out = vae.decode(vae.encode(pixels).latent_dist.mean).sample[0]
        round_trip = Image.fromarray(((out.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy())
        for hits, picture in ((renders, image), (decoded, round_trip)):
            predicted = scorer.predict(picture)
            for attribute in SCORED:
                hits[(scene.time, attribute)].append(predicted[attribute] == getattr(scene, attribute))
    _report(f"{count} rendered scenes at 256x256", renders)
    _report(f"the same through {vae_folder}", decoded)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("data/train-scenes"))
    parser.add_argument("--prompts", type=int, default=30)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reconstructions", type=Path, default=None, metavar="VAE_FOLDER")
    parser.add_argument("--scenes", type=int, default=90, help="rendered scenes for --reconstructions")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    if arguments.reconstructions is not None:
        reconstruction_ceiling(arguments.reconstructions, arguments.scenes)
        return
    pipeline, step = pipeline_from_workdir(arguments.workdir)
    scorer = scene_stats.calibrated_scorer(count=600)
    hits: dict[tuple[str, str], list[bool]] = defaultdict(list)
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
                hits[(scene.time, attribute)].append(predicted[attribute] == getattr(scene, attribute))
    _report(f"step {step}, {arguments.prompts} prompts x 2 seeds at {arguments.size}x{arguments.size}:", hits)


if __name__ == "__main__":
    main()
