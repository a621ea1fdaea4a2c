"""VAE tiling for one run (issue 48, in part): diffusers' tiled decode while the run lasts, the same picture within
its seam blend, and nothing left behind (the next run decodes whole, pixel for pixel the plain picture)."""

from __future__ import annotations

import numpy as np
import pytest

from sdapi.config import ModelConfig
from sdapi.engines import Run
from sdapi.engines.torch_engine import TorchEngine
from tests.support.factories import make_params
from tests.support.services import REPO_ROOT

FIELDS = {"prompt": "a lake and green mountains", "width": 768, "height": 768, "num_inference_steps": 2, "seed": 3}


@pytest.fixture(scope="module")
def trained():
    engine = TorchEngine(ModelConfig(path=str(REPO_ROOT / "models" / "scenes-sd"), device="cpu", dtype="float32"))
    engine.load()
    return engine


def _picture(engine, **fields) -> np.ndarray:
    return np.asarray(engine.generate(Run(make_params(**{**FIELDS, **fields}))).images[0], dtype=float)


def test_a_tiled_decode_is_the_picture_within_its_seams_and_leaves_nothing(trained):
    # The default model's VAE tiles at 512 pixels: a 768-pixel picture decodes in overlapping tiles.
    plain = _picture(trained)
    tiled = _picture(trained, vae_tiling=True)
    difference = np.abs(tiled - plain).mean()
    assert 0.0 < difference < 6.0, difference
    assert trained._text_to_image.vae.use_tiling is False
    assert np.array_equal(_picture(trained), plain)
