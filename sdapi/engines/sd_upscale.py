"""AUTOMATIC1111's "SD upscale" script, as its documentation and source describe it: the init image upscaled by
`scale` (a resampling filter or a neural upscaler), cut into tiles of the request's width x height that overlap
by `overlap` pixels, each tile redrawn by image-to-image at the request's strength (every tile of image k from
seed + k), and the tiles put back together, blended over their overlaps with linear ramps so no seam shows. More
detail than a plain upscale, at the model's own resolution per tile.

Progress counts every tile's steps."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import numpy as np
from PIL import Image

from sdapi.core.params import GenerationParams
from sdapi.engines import StepCallback
from sdapi.engines.hires import NeuralUpscale, upscale_pixels
from sdapi.engines.primitives import run_batches
from sdapi.engines.schedulers import make_scheduler

# A tile's (left, top, right, bottom).
Box = tuple[int, int, int, int]


def tile_boxes(size: tuple[int, int], tile: tuple[int, int], overlap: int) -> list[Box]:
    """The (left, top, right, bottom) of each tile of a `size` picture, rows first, as A1111's split_grid lays
    them: evenly spread, the last flush with the edge."""
    width, height = size
    tile_w, tile_h = min(tile[0], width), min(tile[1], height)
    columns = max(math.ceil((width - overlap) / max(tile_w - overlap, 1)), 1)
    rows = max(math.ceil((height - overlap) / max(tile_h - overlap, 1)), 1)
    dx = (width - tile_w) / (columns - 1) if columns > 1 else 0
    dy = (height - tile_h) / (rows - 1) if rows > 1 else 0
    boxes = []
    for row in range(rows):
        top = min(int(row * dy), height - tile_h)
        for column in range(columns):
            left = min(int(column * dx), width - tile_w)
            boxes.append((left, top, left + tile_w, top + tile_h))
    return boxes


def blend_tiles(size: tuple[int, int], tiles: list[tuple[Box, Image.Image]], overlap: int) -> Image.Image:
    """The tiles put back on a `size` canvas, each weighted by ramps over `overlap` pixels at its inner edges."""
    width, height = size
    total = np.zeros((height, width, 3), dtype=np.float64)
    weights = np.zeros((height, width, 1), dtype=np.float64)
    for (left, top, right, bottom), picture in tiles:
        pixels = np.asarray(picture.convert("RGB"), dtype=np.float64)
        ramp_x = np.ones(right - left)
        ramp_y = np.ones(bottom - top)
        if overlap > 0:
            ramp = np.linspace(1.0 / (overlap + 1), 1.0, overlap, endpoint=False)
            if left > 0:
                ramp_x[: len(ramp)] = np.minimum(ramp_x[: len(ramp)], ramp[: right - left])
            if right < width:
                ramp_x[-len(ramp) :] = np.minimum(ramp_x[-len(ramp) :], ramp[::-1][-(right - left) :])
            if top > 0:
                ramp_y[: len(ramp)] = np.minimum(ramp_y[: len(ramp)], ramp[: bottom - top])
            if bottom < height:
                ramp_y[-len(ramp) :] = np.minimum(ramp_y[-len(ramp) :], ramp[::-1][-(bottom - top) :])
        weight = (ramp_y[:, None] * ramp_x[None, :])[..., None]
        total[top:bottom, left:right] += pixels * weight
        weights[top:bottom, left:right] += weight
    blended = total / np.maximum(weights, 1e-9)
    return Image.fromarray(np.clip(np.round(blended), 0, 255).astype(np.uint8), "RGB")


def make_sd_upscale_images(
    image_to_image: Any,
    scheduler_config: Any,
    params: GenerationParams,
    init_image: Image.Image,
    on_step: StepCallback | None,
    neural: NeuralUpscale | None,
) -> list[Image.Image]:
    """The task's images, each the init image upscaled and redrawn tile by tile from its own seed."""
    plan = params.sd_upscale
    assert plan is not None
    source = init_image.convert("RGB")
    size = (round(source.width * plan.scale), round(source.height * plan.scale))
    upscaled = upscale_pixels(source, plan.upscaler, size, neural)
    if int(params.num_inference_steps * (params.strength or 0.0)) < 1:  # no step to redraw with: as upscaled
        return [upscaled.copy() for _ in range(params.num_images)]
    boxes = tile_boxes(size, (params.width, params.height), plan.overlap)
    per_tile = max(int(params.num_inference_steps * (params.strength or 0.0)), 1)
    total = per_tile * len(boxes) * params.num_images
    images: list[Image.Image] = []
    for index, seed in enumerate(params.image_seeds()):
        one = msgspec.structs.replace(params, num_images=1, seed=seed, sd_upscale=None)
        redrawn: list[tuple[Box, Image.Image]] = []
        for number, box in enumerate(boxes):
            offset = (index * len(boxes) + number) * per_tile

            def report(done: int, _total: int, _images: int, offset: int = offset, index: int = index) -> None:
                if on_step is not None:
                    on_step(min(offset + done, total), total, index)

            tile = upscaled.crop(box)
            tile_size = (box[2] - box[0], box[3] - box[1])
            sized = msgspec.structs.replace(one, width=tile_size[0], height=tile_size[1])
            image_to_image.scheduler = make_scheduler(sized, scheduler_config)
            arguments = {"image": tile, "strength": params.strength}
            (made,) = run_batches(image_to_image, sized, arguments, 1, report, tile_size)
            redrawn.append((box, made if made.size == tile_size else made.resize(tile_size)))
        images.append(blend_tiles(size, redrawn, plan.overlap))
    return images
