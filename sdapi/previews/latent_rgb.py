"""Latents to a small RGB picture without the VAE: a linear map from the latent channels to RGB (AUTOMATIC1111's
"Approx cheap", ComfyUI's latent_rgb_factors), one small matrix product per preview.

The map is fitted, not written by hand: a fixed set of synthetic pictures (colour blocks, gradients, smooth noise)
goes through the model's own VAE into the latent space its denoiser works in (the family says how:
Family.latents_of_pixels), each picture is averaged down to the latent grid, and least squares gives the matrix and
the bias. It is fitted once per VAE, the first time a model of it draws a preview, and kept while the VAE is in
memory: the map then fits the model at hand (a fine-tuned VAE, the trained default model's own, a test's random
one), not only its family's reference VAE; and the reference VAEs, which cannot be downloaded where sdapi is built
and tested, are not needed to ship it. `sdapi preview-map MODEL` runs the same fit on a model and prints the map and
how well it fits.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# The fitting pictures: how many, and their side in pixels (a multiple of every family's 16-pixel latent cell).
FIT_PICTURES = 8
FIT_SIDE = 128


@dataclass(frozen=True)
class LatentRGBMap:
    """RGB = latents · matrix + bias, per latent cell; RGB in [-1, 1] (the VAE's pixel range)."""

    matrix: torch.Tensor  # (channels, 3)
    bias: torch.Tensor  # (3,)
    # The fit's root-mean-square error on its own pictures, in the [-1, 1] range (for the script and the logs).
    rms_error: float = 0.0

    @property
    def channels(self) -> int:
        return int(self.matrix.shape[0])

    def project(self, latents: torch.Tensor) -> torch.Tensor:
        """(channels, h, w) latents -> (3, h, w) RGB in [-1, 1]."""
        cells = latents.detach().to(torch.float32).flatten(1).T  # (h*w, channels)
        rgb = cells @ self.matrix + self.bias
        return rgb.T.reshape(3, *latents.shape[1:]).clamp(-1.0, 1.0)


def fitting_pictures(count: int = FIT_PICTURES, side: int = FIT_SIDE) -> torch.Tensor:
    """The fixed pictures the map is fitted on, (count, 3, side, side) in [-1, 1]: colour blocks of several sizes,
    hue gradients and smooth colour noise, from a fixed seed (the same fit every time)."""
    generator = torch.Generator("cpu").manual_seed(20261207)
    pictures = []
    for index in range(count):
        kind = index % 3
        if kind == 0:  # flat colour blocks, 4 to 16 per side
            blocks = 4 * (1 + index % 4)
            small = torch.rand(3, blocks, blocks, generator=generator)
            picture = F.interpolate(small[None], size=(side, side), mode="nearest")[0]
        elif kind == 1:  # gradients between random corner colours
            corners = torch.rand(3, 2, 2, generator=generator)
            picture = F.interpolate(corners[None], size=(side, side), mode="bilinear", align_corners=True)[0]
        else:  # smooth colour noise
            small = torch.rand(3, 8, 8, generator=generator)
            picture = F.interpolate(small[None], size=(side, side), mode="bicubic", align_corners=True)[0]
        pictures.append(picture.clamp(0.0, 1.0) * 2.0 - 1.0)
    return torch.stack(pictures)


def fit_map(latents: torch.Tensor, pictures: torch.Tensor) -> LatentRGBMap:
    """Least squares from (n, channels, h, w) latents to the (n, 3, H, W) pictures they encode, each averaged down
    to the latent grid."""
    latents = latents.detach().to(torch.float32).cpu()
    targets = F.interpolate(pictures.to(torch.float32).cpu(), size=latents.shape[-2:], mode="area")
    inputs = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    outputs = targets.permute(0, 2, 3, 1).reshape(-1, 3)
    with_bias = torch.cat([inputs, torch.ones(inputs.shape[0], 1)], dim=1)
    solution = torch.linalg.lstsq(with_bias, outputs).solution  # (channels + 1, 3)
    residual = with_bias @ solution - outputs
    return LatentRGBMap(
        matrix=solution[:-1].contiguous(),
        bias=solution[-1].contiguous(),
        rms_error=float(residual.pow(2).mean().sqrt()),
    )


def fit_pipeline_map(pipeline: Any) -> LatentRGBMap:
    """The map of `pipeline`'s VAE, fitted through its family's way into the denoiser's latent space."""
    from sdapi.families import family_of_pipeline  # the families import the engines' helpers; late to avoid a cycle

    family = family_of_pipeline(pipeline).family
    pictures = fitting_pictures()
    with torch.inference_mode():
        latents = family.latents_of_pixels(pipeline, pictures)
    return fit_map(latents, pictures)


# Fitted maps by VAE object: fitted on first use, gone with the VAE.
_MAPS: weakref.WeakKeyDictionary[Any, LatentRGBMap] = weakref.WeakKeyDictionary()
_MAPS_LOCK = threading.Lock()


def map_of(pipeline: Any) -> LatentRGBMap:
    """The latent-to-RGB map of `pipeline`'s VAE (fitted the first time it is asked for)."""
    vae = pipeline.vae
    with _MAPS_LOCK:
        found = _MAPS.get(vae)
        if found is None:
            found = _MAPS[vae] = fit_pipeline_map(pipeline)
        return found
