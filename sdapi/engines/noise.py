"""The starting noise of a text-to-image run with AUTOMATIC1111's variation seeds: image k's noise is its seed's
(seed + k) spherically interpolated towards its variation seed's (variation seed + k) by the variation strength, and
with `seed_resize_from` it is drawn at another size and centred in the picture's own noise, so a seed found at one
size keeps its composition at another (A1111's create_random_tensors, read from its documentation and source).

The seed's noise is drawn from the run's own CPU generators, exactly as the pipeline would draw it, and those same
generators then go to the pipeline: strength 0 is pixel for pixel the plain run, and an ancestral sampler's later
noise is the seed's, as in A1111. Strength 1 starts from the variation seed's noise alone."""

from __future__ import annotations

import torch

from sdapi.core.params import GenerationParams


def slerp(fraction: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from `low` (0) to `high` (1), per row, as A1111 does (linear where they are parallel)."""
    low_unit = low / torch.norm(low, dim=1, keepdim=True)
    high_unit = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_unit * high_unit).sum(1)
    if dot.mean() > 0.9995:
        return low * (1.0 - fraction) + high * fraction
    omega = torch.acos(dot)
    so = torch.sin(omega)
    low_part = (torch.sin((1.0 - fraction) * omega) / so).unsqueeze(1) * low
    high_part = (torch.sin(fraction * omega) / so).unsqueeze(1) * high
    return low_part + high_part


def _noise(seed: int, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.randn(shape, generator=generator or torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


def variation_latents(
    params: GenerationParams, seeds: list[int], generators: list[torch.Generator], shape: tuple[int, int, int]
) -> torch.Tensor:
    """The starting latents (unscaled noise) of the images of `seeds` (image k's: seed + k, its variation seed +
    k), each (channels, h, w) = `shape`; `generators` are the run's, one per image, advanced past the draw as the
    pipeline's own draw would leave them."""
    channels = shape[0]
    drawn_shape = shape
    if params.seed_resize_from is not None:
        drawn_shape = (channels, params.seed_resize_from[1] // 8, params.seed_resize_from[0] // 8)
    rows = []
    for seed, generator in zip(seeds, generators, strict=True):
        noise = _noise(seed, (1, *drawn_shape), generator)[0]
        if params.variation_seed is not None and params.variation_strength > 0:
            variation = _noise(params.variation_seed + (seed - params.seed), (1, *drawn_shape))[0]
            mixed = slerp(params.variation_strength, noise.flatten()[None], variation.flatten()[None])[0]
            noise = mixed.view(drawn_shape)
        if drawn_shape != shape:
            noise = _centred(noise, _noise(seed, (1, *shape))[0])
        rows.append(noise)
    return torch.stack(rows)


def _centred(small: torch.Tensor, canvas: torch.Tensor) -> torch.Tensor:
    """`small` noise centred in `canvas` noise (cropped to it where larger), as A1111's seed resize places it."""
    dx = (canvas.shape[2] - small.shape[2]) // 2
    dy = (canvas.shape[1] - small.shape[1]) // 2
    width = small.shape[2] if dx >= 0 else small.shape[2] + 2 * dx
    height = small.shape[1] if dy >= 0 else small.shape[1] + 2 * dy
    tx, ty = max(dx, 0), max(dy, 0)
    sx, sy = max(-dx, 0), max(-dy, 0)
    placed = canvas.clone()
    placed[:, ty : ty + height, tx : tx + width] = small[:, sy : sy + height, sx : sx + width]
    return placed
