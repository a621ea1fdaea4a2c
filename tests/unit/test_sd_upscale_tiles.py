"""A1111's SD upscale tiling (sdapi.engines.sd_upscale), on pictures: the tiles cover the picture as its split_grid
lays them, and blending tiles that agree gives the picture back exactly."""

from __future__ import annotations

import numpy as np
from PIL import Image

from sdapi.engines.sd_upscale import blend_tiles, tile_boxes


def test_tiles_cover_the_picture_overlapping_and_flush_with_its_edges():
    boxes = tile_boxes((256, 192), (128, 128), 32)
    assert {(right - left, bottom - top) for left, top, right, bottom in boxes} == {(128, 128)}
    assert len(boxes) == 3 * 2  # ceil((256-32)/96) columns, ceil((192-32)/96) rows
    assert max(right for _, _, right, _ in boxes) == 256 and max(bottom for *_, bottom in boxes) == 192
    covered = np.zeros((192, 256), dtype=int)
    for left, top, right, bottom in boxes:
        covered[top:bottom, left:right] += 1
    assert covered.min() >= 1 and covered.max() >= 2  # all covered, with overlaps
    assert tile_boxes((64, 64), (128, 128), 32) == [(0, 0, 64, 64)]  # smaller than a tile: one, the picture


def test_blending_tiles_that_agree_gives_the_picture_back():
    rng = np.random.default_rng(1)
    picture = Image.fromarray(rng.integers(0, 256, (192, 256, 3), dtype=np.uint8), "RGB")
    boxes = tile_boxes(picture.size, (128, 128), 32)
    blended = blend_tiles(picture.size, [(box, picture.crop(box)) for box in boxes], 32)
    assert np.array_equal(np.asarray(blended), np.asarray(picture))
