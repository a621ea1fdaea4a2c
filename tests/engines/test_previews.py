"""Live previews on the engines (sdapi.previews): drawn at the step the step callback asks, from the run's own rows in
a cross-request batch, on an ONNX export as on torch, with TAESD (diffusers' AutoencoderTiny) where one is
configured, and A1111's skip ending the current pipeline call early. How much a preview looks like the final image
is measured on the trained default model (tests/integration/previews): a tiny model's random VAE is not linear."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny
from PIL import Image

from sdapi.config import ModelConfig, OnnxConfig
from sdapi.engines import Run
from sdapi.engines.onnx_engine import OnnxEngine
from sdapi.engines.torch_engine import TorchEngine
from sdapi.errors import SkipCurrentImage
from sdapi.previews.drawing import draw_current
from tests.support.factories import make_params

SIZE = 64


@pytest.fixture(scope="module")
def sd15(tiny_model):
    engine = TorchEngine(ModelConfig(path=str(tiny_model), device="cpu", dtype="float32"))
    engine.load()
    return engine


def _drawing(max_side: int = 256, decoder: str | None = None, every: int = 1):
    drawn: dict[int, Image.Image] = {}

    def on_step(step: int, total: int, images_done: int) -> None:
        if step % every == 0:
            picture = draw_current(max_side, decoder)
            assert picture is not None
            drawn[step] = picture

    return drawn, on_step


def test_previews_are_drawn_when_asked_and_only_then(sd15):
    drawn, on_step = _drawing(every=2)
    params = make_params(width=96, height=64, num_inference_steps=6, seed=4)
    sd15.generate(Run(params, on_step=on_step))
    assert sorted(drawn) == [2, 4, 6] and {picture.size for picture in drawn.values()} == {(96, 64)}
    small, on_small = _drawing(max_side=48)
    sd15.generate(Run(params, on_step=on_small))
    assert {picture.size for picture in small.values()} == {(48, 32)}  # the longest side capped, the aspect kept
    assert draw_current(256) is None  # outside a step report nothing draws


def test_a_batch_members_previews_come_from_its_own_rows(sd15):
    """Each member of a cross-request batch draws from its own first row: the same pictures as its own run's."""
    members, drawings = [], []
    for prompt, seed in (("a red ball", 1), ("snowy mountains at night", 7)):
        drawn, on_step = _drawing()
        drawings.append(drawn)
        members.append(
            Run(
                make_params(prompt=prompt, seed=seed, width=SIZE, height=SIZE, num_inference_steps=4),
                None,
                on_step=on_step,
            )
        )
    sd15.generate_batch(members)
    for member, drawn in zip(members, drawings, strict=True):
        alone, on_step = _drawing()
        sd15.generate(Run(member.params, on_step=on_step))
        difference = np.abs(np.asarray(drawn[4], dtype=float) - np.asarray(alone[4], dtype=float)).mean()
        assert difference <= 1.0, difference
    assert not np.array_equal(np.asarray(drawings[0][4]), np.asarray(drawings[1][4]))


def test_a_tiny_decoder_draws_instead_of_the_map_when_it_fits(sd15, tmp_path: Path):
    torch.manual_seed(0)
    fitting, other = tmp_path / "taesd", tmp_path / "taesd-16"
    AutoencoderTiny(
        latent_channels=4, encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8)
    ).save_pretrained(fitting)
    AutoencoderTiny(
        latent_channels=16, encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8)
    ).save_pretrained(other)
    params = make_params(width=SIZE, height=SIZE, num_inference_steps=2, seed=9)
    pictures = {}
    for name, decoder in (
        ("map", None),
        ("taesd", str(fitting)),
        ("mismatch", str(other)),
        ("missing", str(tmp_path / "none")),
    ):
        drawn, on_step = _drawing(decoder=decoder)
        sd15.generate(Run(params, on_step=on_step))
        pictures[name] = np.asarray(drawn[2])
        assert drawn[2].size == (SIZE, SIZE)
    assert not np.array_equal(pictures["taesd"], pictures["map"])
    # A decoder for other latents, or none that loads, leaves the map to draw.
    assert np.array_equal(pictures["mismatch"], pictures["map"]) and np.array_equal(
        pictures["missing"], pictures["map"]
    )


def test_an_onnx_export_draws_previews_too(plain_export, tiny_model, tmp_path):
    engine = OnnxEngine(ModelConfig(path=str(tiny_model), onnx_path=str(plain_export)), OnnxConfig(), tmp_path)
    engine.load()
    drawn, on_step = _drawing(every=3)
    engine.generate(Run(make_params(width=SIZE, height=SIZE, num_inference_steps=6, seed=2), on_step=on_step))
    assert sorted(drawn) == [3, 6] and drawn[6].size == (SIZE, SIZE)


def test_a_skip_ends_the_current_call_early_and_the_next_one_runs_in_full(tiny_model):
    """Two pipeline calls (batch size 1): skipping in the first ends it at that step; the second is untouched."""
    params = make_params(width=SIZE, height=SIZE, num_inference_steps=8, num_images=2, seed=5)
    full = TorchEngine(ModelConfig(path=str(tiny_model), device="cpu", dtype="float32", batch_size=1))
    full.load()
    plain = full.generate(Run(params)).images
    steps: list[int] = []

    def on_step(step: int, total: int, images_done: int) -> None:
        steps.append(step)
        if step == 2:
            raise SkipCurrentImage()

    skipped = full.generate(Run(params, on_step=on_step)).images
    # The first call stopped reporting after step 2; the second ran all its steps (the scheduler's count per call:
    # PNDM runs 9 for 8), from the first of its own.
    per_call = steps[-1] // 2
    assert steps == [1, 2, *range(per_call + 1, 2 * per_call + 1)], steps
    assert not np.array_equal(np.asarray(skipped[0]), np.asarray(plain[0]))
    assert np.array_equal(np.asarray(skipped[1]), np.asarray(plain[1]))


@pytest.mark.parametrize(
    "scheduler",
    ["EulerAncestralDiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "LCMScheduler", "DDIMScheduler"],
)
def test_watching_the_scheduler_changes_no_pixel(sd15, scheduler):
    """The step watch wraps the scheduler's step(); pipelines read its signature to decide whether to pass the
    request's generators (and eta): wrapped, it must still say it takes them, or an ancestral sampler would draw
    its noise from torch's global generator and the seed rule would break."""
    params = make_params(width=SIZE, height=SIZE, num_inference_steps=4, num_images=2, seed=31, scheduler=scheduler)
    plain = sd15.generate(Run(params)).images  # no step callback: no watch
    watched = sd15.generate(Run(params, on_step=lambda *_: None)).images
    for a, b in zip(plain, watched, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
