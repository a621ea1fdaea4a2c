"""Tiny decoders (`vae_decoder: tiny`): a TAESD-style AutoencoderTiny decodes a run's latents instead of the
model's VAE. It is a few conv layers where the VAE has wide ResNet blocks with attention: on SD 1.5's VAE at 512²
it decodes about 12x faster on a CPU, at a cost in fine detail (docs/benchmarks.md).

Where one is found, first to last: the model's own `vae_tiny/` folder (the embedded default model ships its own,
distilled from its VAE by training/train_tiny_decoder.py), then `vae.tiny_dir/<family>/` (madebyollin's taesd for
sd1 and sd2, taesdxl for sdxl, taesd3 for sd3, taef1 for flux). A folder is used when diffusers' config says
AutoencoderTiny with the family's latent channels.

Only the decoder stands in: image-to-image still encodes with the model's VAE, so the run starts from the same
latents."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sdapi.families import Family
from sdapi.models.configs import read_config

logger = logging.getLogger(__name__)

OWN_FOLDER = "vae_tiny"  # a model folder's own tiny decoder


def tiny_decoder_folder(model_path: str, family: Family, tiny_dir: Path | None) -> Path | None:
    """The tiny decoder a model of `family` at `model_path` runs with `vae_decoder: tiny`, or None (also for a
    family whose pipelines' latents no tiny decoder takes)."""
    if not family.tiny_decoder:
        return None
    candidates = [Path(model_path) / OWN_FOLDER] + ([tiny_dir / family.name] if tiny_dir is not None else [])
    for folder in candidates:
        config = read_config(folder / "config.json")
        if config is None:
            continue
        if config.get("_class_name") != "AutoencoderTiny":
            logger.warning("%s: not an AutoencoderTiny (%s): not used", folder, config.get("_class_name"))
            continue
        if config.get("latent_channels", 4) != family.latent_channels:
            logger.warning(
                "%s: %s latent channels, %s has %s: not used",
                folder,
                config.get("latent_channels", 4),
                family.label,
                family.latent_channels,
            )
            continue
        return folder
    return None


def load_tiny_decoder(folder: Path, device: str, dtype: Any) -> Any:
    from diffusers import AutoencoderTiny

    tiny = AutoencoderTiny.from_pretrained(str(folder), torch_dtype=dtype)
    return tiny.to(device).eval()


@contextlib.contextmanager
def tiny_decoding(vae: Any, tiny: Any | None, tiled: bool) -> Iterator[None]:
    """While the block runs, `vae.decode` (what every pipeline of the model calls, with latents / scaling_factor +
    shift_factor) decodes with `tiny` instead (in tiles when `tiled`); after it, the VAE decodes itself again.
    Nothing happens when `tiny` is None."""
    if tiny is None:
        yield
        return
    scaling = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0

    def decode(latents: Any, return_dict: bool = True, generator: Any = None) -> Any:
        # Back to the denoiser's space, which is what a tiny decoder takes (its own scaling factor is 1).
        denoised = ((latents - shift) * scaling).to(dtype=tiny.dtype)
        return tiny.decode(denoised, return_dict=return_dict)

    if tiled:
        tiny.enable_tiling()
    vae.decode = decode  # an instance attribute hides the class's method while the run lasts
    try:
        yield
    finally:
        del vae.decode
        if tiled:
            tiny.disable_tiling()
