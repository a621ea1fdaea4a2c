"""A preview picture from a pipeline between two steps, on the generation thread: the predicted final image
(denoised.py), one row of it, as the family's latent grid, turned to RGB by the VAE's fitted linear map
(latent_rgb.py) or, where `previews.decoder` names one, a tiny VAE decoder (TAESD: diffusers' AutoencoderTiny),
then scaled to fit the preview's longest side. No full VAE call: a preview costs a matrix product (or TAESD's small
decoder) and a resize; encoding it (JPEG, WebP) happens off this thread (sdapi.previews.encoding)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from sdapi.core.module_building import MODULES_BUILT_ONE_AT_A_TIME
from sdapi.previews.denoised import StepWatch
from sdapi.previews.latent_rgb import map_of

logger = logging.getLogger(__name__)


def preview_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(width, height) of a preview of a `size` picture: its aspect, the longest side at most `max_side`."""
    width, height = size
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def preview_picture(
    pipeline: Any,
    watch: StepWatch | None,
    latents: torch.Tensor,
    size: tuple[int, int],
    row: int,
    max_side: int,
    decoder: str | None = None,
) -> Image.Image:
    """Row `row`'s preview of a picture of `size` (width, height) being made by `pipeline`, whose latents after the
    step are `latents`."""
    from sdapi.families import family_of_pipeline  # the families import the engines' helpers; late to avoid a cycle

    family = family_of_pipeline(pipeline).family
    denoised = watch.denoised() if watch is not None else None
    chosen = latents if denoised is None else denoised
    with torch.inference_mode():
        grid = family.spatial_latents(pipeline, chosen[row : row + 1], size)
        rgb = _decoded(decoder, grid) if decoder else None
        if rgb is None:
            rgb = map_of(pipeline).project(grid[0])
        width, height = preview_size(size, max_side)
        rgb = F.interpolate(rgb[None].to(torch.float32), size=(height, width), mode="bilinear", antialias=True)[0]
        pixels = ((rgb.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(pixels, "RGB")


_DECODERS: dict[str, Any] = {}
_DECODERS_LOCK = threading.Lock()


def _decoded(folder: str, grid: torch.Tensor) -> torch.Tensor | None:
    """TAESD's picture of `grid` (3, h, w) in [-1, 1]; None where the decoder cannot load or does not fit the
    latents (the linear map draws it then)."""
    decoder = _decoder(folder)
    if decoder is None or decoder.config.latent_channels != grid.shape[1]:
        return None
    parameter = next(iter(decoder.parameters()))
    if parameter.device != grid.device:
        decoder.to(grid.device)
    latents = grid.to(parameter.dtype) / decoder.config.scaling_factor + (
        getattr(decoder.config, "shift_factor", None) or 0.0
    )
    return decoder.decode(latents.to(grid.device)).sample[0].to(torch.float32)


def _decoder(folder: str) -> Any:
    with _DECODERS_LOCK:
        if folder not in _DECODERS:
            from diffusers import AutoencoderTiny

            try:
                with MODULES_BUILT_ONE_AT_A_TIME:
                    _DECODERS[folder] = AutoencoderTiny.from_pretrained(Path(folder)).eval()
            except (OSError, ValueError) as error:
                logger.error(
                    "previews.decoder %s cannot be loaded (%s): the latent-to-RGB map draws previews", folder, error
                )
                _DECODERS[folder] = None
        return _DECODERS[folder]
