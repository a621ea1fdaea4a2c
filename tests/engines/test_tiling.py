"""Seamless tiling leaves nothing behind (issue 47, item 3): the convolutions are the class's own again after a
tiled run, and a plain run after it is pixel for pixel a plain run before it. (That the picture tiles is measured on
the trained model over HTTP: tests/integration/native_api/test_tiling.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdapi.config import ModelConfig
from sdapi.engines import Run
from sdapi.engines.tiling import tiling_applied
from sdapi.engines.torch_engine import TorchEngine
from tests.support.factories import make_params

FIELDS = {"prompt": "a red ball on grass", "width": 64, "height": 64, "num_inference_steps": 3, "seed": 2}


@pytest.fixture(scope="module")
def sd15(tiny_model):
    engine = TorchEngine(ModelConfig(path=str(tiny_model), device="cpu", dtype="float32"))
    engine.load()
    return engine


def _picture(engine, **fields) -> np.ndarray:
    return np.asarray(engine.generate(Run(make_params(**FIELDS, **fields))).images[0])


def test_a_tiled_run_changes_the_picture_and_leaves_nothing_behind(sd15):
    before = _picture(sd15)
    tiled = {axes: _picture(sd15, tiling=axes) for axes in ("xy", "x", "y")}
    after = _picture(sd15)
    assert np.array_equal(before, after)
    assert all(not np.array_equal(picture, before) for picture in tiled.values())
    assert not np.array_equal(tiled["x"], tiled["xy"]) and not np.array_equal(tiled["y"], tiled["xy"])
    convs = [module for module in sd15._text_to_image.unet.modules() if isinstance(module, torch.nn.Conv2d)]
    assert convs and all("forward" not in conv.__dict__ for conv in convs)


def test_the_convolutions_come_back_even_when_the_run_fails():
    conv = torch.nn.Conv2d(3, 3, 3, padding=1)
    with pytest.raises(RuntimeError), tiling_applied([conv], "xy"):
        assert "forward" in conv.__dict__
        raise RuntimeError("the run failed")
    assert "forward" not in conv.__dict__


def test_one_axis_wraps_that_axis_alone():
    conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    torch.nn.init.ones_(conv.weight)
    picture = torch.zeros(1, 1, 4, 4)
    picture[0, 0, 1, 0] = 1.0  # a dot on the left edge
    with torch.no_grad(), tiling_applied([conv], "x"):
        wrapped = conv(picture)
    assert wrapped[0, 0, 1, 3] == 1.0  # reached the right edge across the seam
    with torch.no_grad(), tiling_applied([conv], "y"):
        not_wrapped = conv(picture)
    assert not_wrapped[0, 0, 1, 3] == 0.0
