"""A1111's variation seeds (issue 47, item 4) on the torch engine: strength 0 is the seed's picture and strength 1
the variation seed's, pixel for pixel (a deterministic scheduler), batches keep A1111's rule (variation seed + k),
and seed resize centres the seed's noise drawn at another size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdapi.config import ModelConfig
from sdapi.engines import Run
from sdapi.engines.noise import slerp, variation_latents
from sdapi.engines.torch_engine import TorchEngine
from tests.support.factories import make_params

SIZE = 64
FIELDS = {"prompt": "a red ball on grass", "width": SIZE, "height": SIZE, "num_inference_steps": 4}


@pytest.fixture(scope="module")
def sd15(tiny_model):
    engine = TorchEngine(ModelConfig(path=str(tiny_model), device="cpu", dtype="float32"))
    engine.load()
    return engine


def _pictures(engine, **fields) -> list[np.ndarray]:
    return [np.asarray(image) for image in engine.generate(Run(make_params(**FIELDS, **fields))).images]


def test_strength_0_and_1_are_the_two_seeds_pictures_and_batches_add_k(sd15):
    seed_pictures = _pictures(sd15, seed=10, num_images=2)
    variation_pictures = _pictures(sd15, seed=500, num_images=2)
    none = _pictures(sd15, seed=10, num_images=2, variation_seed=500, variation_strength=0.0)
    full = _pictures(sd15, seed=10, num_images=2, variation_seed=500, variation_strength=1.0)
    half = _pictures(sd15, seed=10, num_images=2, variation_seed=500, variation_strength=0.5)
    for k in range(2):  # image k: seed + k towards variation seed + k
        assert np.array_equal(none[k], seed_pictures[k])
        assert np.array_equal(full[k], variation_pictures[k])
        assert not np.array_equal(half[k], seed_pictures[k]) and not np.array_equal(half[k], variation_pictures[k])


def test_an_ancestral_sampler_keeps_the_seeds_later_noise_at_strength_0(sd15):
    fields = {"seed": 3, "scheduler": "EulerAncestralDiscreteScheduler"}
    assert np.array_equal(
        _pictures(sd15, **fields)[0], _pictures(sd15, **fields, variation_seed=9, variation_strength=1e-9)[0]
    )


def test_seed_resize_centres_the_seeds_noise_drawn_at_the_other_size():
    params = make_params(**FIELDS, seed=4, seed_resize_from=(32, 48))
    generators = [torch.Generator("cpu").manual_seed(4)]
    latents = variation_latents(params, [4], generators, (4, 8, 8))
    small = torch.randn((1, 4, 6, 4), generator=torch.Generator("cpu").manual_seed(4))[0]  # 48x32 / 8
    canvas = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(4))[0]
    assert torch.equal(latents[0][:, 1:7, 2:6], small)
    assert torch.equal(latents[0][:, 0], canvas[:, 0])  # outside the centred block: the picture's own noise


def test_slerp_ends_on_its_two_ends():
    low, high = torch.randn(1, 256), torch.randn(1, 256)
    assert torch.allclose(slerp(0.0, low, high), low) and torch.allclose(slerp(1.0, low, high), high)
    middle = slerp(0.5, low, high)
    assert abs(float(middle.norm()) - float((low.norm() + high.norm()) / 2)) < 0.1 * float(low.norm())
