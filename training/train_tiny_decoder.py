"""Distil the embedded default model's VAE into a tiny decoder (`vae_decoder: tiny`, sdapi.vaes.tiny), on CPU.

    python -m training.train_tiny_decoder --model models/scenes-sd

The default model's VAE decoder is most of its picture's cost on a CPU (265 ms of a 512² picture's ~600 ms at 20
steps on a 2-core EPYC): a TAESD-style AutoencoderTiny of 16 channels decodes the same latents in a fraction of
that. It is taught to give back what the VAE's decoder gives for the latents of drawn scenes (training.scenes):
each scene's latent mean and one latent drawn from its distribution, so latents a little off the encoder's means
(what the UNet makes) decode as the VAE would decode them. Its encoder is taught the VAE encoder's means the same
way (sdapi decodes with it alone; the encoder keeps the folder a whole, honest AutoencoderTiny).

The decoder is saved as `<model>/vae_tiny/` and added to the model's manifest (its files' sha256, this command, the
loss curve and the held-out error). Seeded: the same command on the same torch build gives the same weights."""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sdapi.models.default_model import manifest_of, sha256_of
from training import scenes

SEED = 20261208
SIZE = 256  # pictures are rendered at this side; the tiny decoder is all convolutions, any size runs
CROP = 16  # latent cells a training crop is (128 pixels)
BATCH = 16
CHANNELS = 16
DECODER_BLOCKS = (2, 2, 2, 0)  # the last level (full resolution) has no block: its cost is one 16-channel conv
ENCODER_CHANNELS = 8
ENCODER_BLOCKS = (1, 1, 1, 1)
LEARNING_RATE = 2e-3


def _log(message: str) -> None:
    print(f"[train-tiny-decoder {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def render(count: int, offset: int) -> np.ndarray:
    """`count` drawn scenes at SIZE², uint8 (n, h, w, 3), each seeded by its index."""
    pictures = np.empty((count, SIZE, SIZE, 3), dtype=np.uint8)
    for index in range(count):
        seed = SEED + offset + index
        pictures[index] = np.asarray(scenes.render(scenes.random_scene(random.Random(seed)), SIZE, seed))
    return pictures


def _pixels(pictures: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(pictures).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def teacher_pairs(vae: Any, pictures: np.ndarray, draws: bool) -> tuple[Any, Any, Any]:
    """(pixels, scaled latents, what the VAE's decoder gives for them): latent means, and with `draws` one latent
    drawn from each picture's distribution too."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    inputs, latents, decoded = [], [], []
    for start in range(0, len(pictures), 8):
        pixels = _pixels(pictures[start : start + 8])
        distribution = vae.encode(pixels).latent_dist
        kinds = [distribution.mean] + ([distribution.sample(generator)] if draws else [])
        for raw in kinds:
            inputs.append(pixels)
            latents.append(raw * vae.config.scaling_factor)
            decoded.append(vae.decode(raw).sample.clamp(-1, 1))
    return torch.cat(inputs), torch.cat(latents), torch.cat(decoded)


def tiny_autoencoder() -> Any:
    from diffusers import AutoencoderTiny

    return AutoencoderTiny(
        decoder_block_out_channels=(CHANNELS,) * 4,
        num_decoder_blocks=DECODER_BLOCKS,
        encoder_block_out_channels=(ENCODER_CHANNELS,) * 4,
        num_encoder_blocks=ENCODER_BLOCKS,
        latent_channels=4,
    )


def train(tiny: Any, pixels: Any, latents: Any, decoded: Any, steps: int) -> list[float]:
    """Teach the decoder the VAE's decoding of `latents` and the encoder their means, on random crops."""
    import torch

    torch.manual_seed(SEED)
    optimizer = torch.optim.AdamW(tiny.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LEARNING_RATE, total_steps=steps, pct_start=0.05)
    cells = latents.shape[-1]
    curve = []
    for step in range(steps):
        picks = torch.randint(0, len(latents), (BATCH,))
        top, left = (int(value) for value in torch.randint(0, cells - CROP + 1, (2,)))
        crop = latents[picks, :, top : top + CROP, left : left + CROP]
        target = decoded[picks, :, top * 8 : (top + CROP) * 8, left * 8 : (left + CROP) * 8]
        picture = pixels[picks, :, top * 8 : (top + CROP) * 8, left * 8 : (left + CROP) * 8]
        decoder_loss = (tiny.decode(crop).sample - target).abs().mean()
        encoder_loss = (tiny.encode(picture).latents - crop).abs().mean()
        loss = decoder_loss + 0.1 * encoder_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0:
            curve.append(round(decoder_loss.item(), 5))
            _log(f"step {step}/{steps}: decoder {decoder_loss.item():.4f}, encoder {encoder_loss.item():.4f}")
    return curve


def held_out_error(vae: Any, tiny: Any, count: int) -> float:
    """Mean absolute difference (0-255) between the VAE's and the tiny decoder's pictures of held-out scenes."""
    _, latents, decoded = teacher_pairs(vae, render(count, offset=1_000_000), draws=False)
    ours = tiny.decode(latents).sample.clamp(-1, 1)
    return round(float((ours - decoded).abs().mean() * 127.5), 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/scenes-sd"), help="the default model's folder")
    parser.add_argument("--scenes", type=int, default=480)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    arguments = parser.parse_args(argv)
    import torch
    from diffusers import AutoencoderKL

    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    began = time.monotonic()
    vae = AutoencoderKL.from_pretrained(str(arguments.model / "vae"), torch_dtype=torch.float32).eval()
    _log(f"rendering {arguments.scenes} scenes; the VAE encodes and decodes them")
    with torch.no_grad():
        pixels, latents, decoded = teacher_pairs(vae, render(arguments.scenes, offset=0), draws=True)
    tiny = tiny_autoencoder().train()
    curve = train(tiny, pixels, latents, decoded, arguments.steps)
    tiny.eval()
    with torch.no_grad():
        error = held_out_error(vae, tiny, 48)
    _log(f"held-out mean absolute difference to the VAE's pictures: {error} of 255")
    target = arguments.model / "vae_tiny"
    tiny.save_pretrained(str(target))
    drop_unread_config(target / "config.json")
    seconds = round(time.monotonic() - began, 1)
    _record(arguments.model, target, argv, curve, error, seconds)
    _log(f"saved {target} ({seconds} s)")
    return 0


def drop_unread_config(config_path: Path) -> None:
    """diffusers 0.38 saves AutoencoderTiny's registered `block_out_channels` too, then warns on every load that it
    does not read it: left out."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.pop("block_out_channels", None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _record(
    model: Path, target: Path, argv: list[str] | None, curve: list[float], error: float, seconds: float
) -> None:
    """The tiny decoder's files and how they were made, in the model's manifest (paths from the repository root)."""
    manifest_path = manifest_of(model)
    if not manifest_path.exists():
        return
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    root = Path.cwd().resolve()
    files = sorted(path for path in target.resolve().rglob("*") if path.is_file())
    manifest["files"].update({str(path.relative_to(root)): sha256_of(path) for path in files})
    arguments = " ".join(argv if argv is not None else sys.argv[1:])
    manifest["tiny_decoder"] = {
        "trained_by": f"python -m training.train_tiny_decoder {arguments}".strip(),
        "seed": SEED,
        "seconds": seconds,
        "held_out_mean_abs_diff_0_255": error,
        "decoder_loss": curve,
    }
    manifest["total_bytes"] = sum((root / name).stat().st_size for name in manifest["files"])
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
