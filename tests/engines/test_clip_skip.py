"""Clip skip (issue 47, item 2): sdapi's clip_skip counts as AUTOMATIC1111 does (2: the penultimate CLIP layer), which
is diffusers' clip_skip=1; the engine's pictures equal diffusers' own pipeline's with that setting, on SD 1.x (one
task) and in a cross-request batch (prompts encoded per member)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from sdapi.config import ModelConfig
from sdapi.engines import Run
from sdapi.engines.torch_engine import TorchEngine
from sdapi.errors import InvalidParameter
from sdapi.families.detection import detect_folder
from tests.support.factories import make_params

SIZE = 64
FIELDS = {"prompt": "a red ball on grass", "width": SIZE, "height": SIZE, "num_inference_steps": 4, "seed": 13}


@pytest.fixture(scope="module")
def sd15(tiny_model):
    engine = TorchEngine(ModelConfig(path=str(tiny_model), device="cpu", dtype="float32"))
    engine.load()
    return engine


def _diffusers(tiny_model, clip_skip: int | None) -> np.ndarray:
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    params = make_params(**FIELDS)
    image = pipeline(
        FIELDS["prompt"],
        num_inference_steps=FIELDS["num_inference_steps"],
        guidance_scale=params.guidance_scale,
        width=SIZE,
        height=SIZE,
        generator=[torch.Generator("cpu").manual_seed(FIELDS["seed"])],
        clip_skip=clip_skip,
    ).images[0]
    return np.asarray(image)


def test_a1111s_2_is_diffusers_1(sd15, tiny_model):
    skipped = np.asarray(sd15.generate(Run(make_params(**FIELDS, clip_skip=2))).images[0])
    assert np.array_equal(skipped, _diffusers(tiny_model, clip_skip=1))
    plain = np.asarray(sd15.generate(Run(make_params(**FIELDS))).images[0])
    assert np.array_equal(plain, _diffusers(tiny_model, clip_skip=None))
    assert not np.array_equal(plain, skipped)


def test_a_batch_member_with_clip_skip_gets_its_own_runs_pixels(sd15):
    members = [Run(make_params(**{**FIELDS, "seed": seed}, clip_skip=3), on_step=lambda *_: None) for seed in (1, 2)]
    batched = sd15.generate_batch(members)
    for member, result in zip(members, batched, strict=True):
        assert result is not None
        alone = np.asarray(sd15.generate(member).images[0], dtype=float)
        assert np.abs(np.asarray(result.images[0], dtype=float) - alone).mean() <= 1.0


def test_a_family_without_clip_layers_refuses_it(tiny_transformer_models):
    flux = detect_folder(tiny_transformer_models["flux"])
    with pytest.raises(InvalidParameter) as refused:
        flux.check(make_params(**FIELDS, clip_skip=2, guidance_scale=3.5))
    assert refused.value.field == "clip_skip"
    sd3 = detect_folder(tiny_transformer_models["sd3"])
    sd3.check(make_params(**FIELDS, clip_skip=2))  # SD 3.x's CLIP encoders take it
