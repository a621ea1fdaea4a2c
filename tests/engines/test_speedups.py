"""Speed levers on the torch engine (issue 48): DeepCache, token merging (tomesd) and a tiny decoder on SD 1.x's tiny
model, diffusers' First Block Cache and TaylorSeer on FLUX.1's. Each changes the run's picture, leaves nothing
behind (the next run without it is pixel for pixel the plain run before it), keeps the seed rule, and runs the
same way alone and in a cross-request batch. (What each saves and costs is measured by bench/speed.py, not here.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny

from sdapi.config import ModelConfig
from sdapi.core.request import StepCache
from sdapi.engines import Run
from sdapi.engines.speedups import step_cache_applied
from sdapi.engines.torch_engine import TorchEngine
from sdapi.errors import InvalidParameter
from tests.support.factories import make_params
from tests.support.services import mean_abs_diff

SIZE = 64
FIELDS = {"prompt": "a red ball on grass", "width": SIZE, "height": SIZE, "num_inference_steps": 5, "seed": 2}
DEEPCACHE = StepCache(mode="deepcache", interval=3, branch=0)
LEVERS = {
    "deepcache": {"step_cache": DEEPCACHE},
    "token merging": {"token_merging": 0.5},
    "tiny decoder": {"vae_decoder": "tiny"},
}


def _tiny_decoder(folder, latent_channels: int) -> None:
    """A random AutoencoderTiny of the family's latent channels: the plumbing is what is tested here (the trained
    default model's own is tested over HTTP)."""
    torch.manual_seed(0)
    small = {"encoder_block_out_channels": (8,) * 4, "decoder_block_out_channels": (8,) * 4}
    AutoencoderTiny(latent_channels=latent_channels, **small).save_pretrained(str(folder))


@pytest.fixture(scope="module")
def sd15(tiny_model, tmp_path_factory):
    tiny_dir = tmp_path_factory.mktemp("vae-tiny")
    _tiny_decoder(tiny_dir / "sd1", 4)
    engine = TorchEngine(ModelConfig(path=str(tiny_model), device="cpu", dtype="float32"), tiny_vae_dir=tiny_dir)
    engine.load()
    return engine


def _pictures(engine, **fields) -> list[np.ndarray]:
    return [np.asarray(image) for image in engine.generate(Run(make_params(**(FIELDS | fields)))).images]


def _untouched(engine) -> None:
    """Nothing of a lever is left on the model's modules."""
    pipeline = engine._text_to_image
    for module in pipeline.unet.modules():
        assert "forward" not in module.__dict__ and "_tome_info" not in module.__dict__
        assert type(module).__name__ != "ToMeBlock"
    assert "decode" not in pipeline.vae.__dict__


@pytest.mark.parametrize("lever", list(LEVERS))
def test_a_lever_changes_the_picture_keeps_the_seed_rule_and_leaves_nothing(sd15, lever):
    before = _pictures(sd15)[0]
    pulled = _pictures(sd15, **LEVERS[lever])[0]
    again = _pictures(sd15, **LEVERS[lever])[0]
    after = _pictures(sd15)[0]
    assert pulled.shape == before.shape == (SIZE, SIZE, 3)
    assert not np.array_equal(pulled, before)
    assert np.array_equal(pulled, again)  # the same seed, the same picture
    assert np.array_equal(after, before)
    _untouched(sd15)


def test_deepcache_counts_each_denoising_loop_on_its_own(sd15):
    """Two pictures made one after the other under one cache are the same picture: each loop starts with a full
    UNet call (5 steps: a count carried over would make the second loop's first call reuse the first's features)."""
    pipeline = sd15._text_to_image

    def one():
        generator = torch.Generator().manual_seed(4)
        made = pipeline("a lake", num_inference_steps=5, width=SIZE, height=SIZE, generator=generator, output_type="np")
        return made.images[0]

    with torch.inference_mode(), step_cache_applied(pipeline, DEEPCACHE):
        first, second = one(), one()
    assert np.array_equal(first, second)
    _untouched(sd15)


def test_deepcache_and_seamless_tiling_each_take_off_their_own(sd15):
    tiled = _pictures(sd15, tiling="xy")[0]
    both = _pictures(sd15, tiling="xy", step_cache=DEEPCACHE)[0]
    assert not np.array_equal(both, tiled)
    assert np.array_equal(_pictures(sd15, tiling="xy")[0], tiled)
    _untouched(sd15)
    convs = [module for module in sd15._text_to_image.unet.modules() if isinstance(module, torch.nn.Conv2d)]
    assert all("forward" not in conv.__dict__ for conv in convs)


def test_levers_together_with_a_second_pass_and_several_images(sd15):
    """A second pass runs on latents of another shape (a new loop for DeepCache); several images are each one loop."""
    from sdapi.core.params import HiresParams

    hires = HiresParams(width=96, height=96, steps=3, strength=0.5, upscaler="latent")
    every = {"step_cache": DEEPCACHE, "token_merging": 0.5, "vae_decoder": "tiny"}
    made = _pictures(sd15, hires=hires, num_images=2, **every)
    assert [picture.shape for picture in made] == [(96, 96, 3)] * 2
    alone = _pictures(sd15, hires=hires, seed=FIELDS["seed"] + 1, **every)[0]
    assert mean_abs_diff(made[1], alone) <= 1.0  # the seed rule: image k is seed + k's
    _untouched(sd15)


def test_cross_request_batch_members_keep_their_pixels(sd15):
    every = {"step_cache": DEEPCACHE, "token_merging": 0.5, "vae_decoder": "tiny"}
    members = [
        Run(make_params(**(FIELDS | every | {"prompt": prompt, "seed": seed})))
        for prompt, seed in (("a red ball", 1), ("snowy mountains", 7))
    ]
    alone = [sd15.generate(member).images[0] for member in members]
    batched = sd15.generate_batch(members)
    for lone, member in zip(alone, batched, strict=True):
        assert member is not None
        assert mean_abs_diff(np.asarray(lone), np.asarray(member.images[0])) <= 1.0
    _untouched(sd15)


def test_the_engine_refuses_what_the_model_cannot_run(sd15, tiny_model):
    with pytest.raises(InvalidParameter, match="first_block"):
        sd15.check(make_params(step_cache=StepCache(mode="first_block", threshold=0.05)))
    levels = len(sd15._text_to_image.unet.down_blocks)
    sd15.check(make_params(step_cache=StepCache(mode="deepcache", interval=3, branch=3 * levels - 1)))
    with pytest.raises(InvalidParameter, match="branch"):
        sd15.check(make_params(step_cache=StepCache(mode="deepcache", interval=3, branch=3 * levels)))
    bare = TorchEngine(ModelConfig(path=str(tiny_model), device="cpu", dtype="float32"))
    bare.load()
    with pytest.raises(InvalidParameter) as refused:
        bare.check(make_params(vae_decoder="tiny"))
    assert refused.value.field == "vae_decoder"


@pytest.fixture(scope="module")
def flux(tiny_transformer_models, tmp_path_factory):
    tiny_dir = tmp_path_factory.mktemp("vae-tiny-flux")
    _tiny_decoder(tiny_dir / "flux", 16)
    path = tiny_transformer_models["flux"]
    engine = TorchEngine(ModelConfig(path=str(path), device="cpu", dtype="float32"), tiny_vae_dir=tiny_dir)
    engine.load()
    return engine


def _hooks(transformer) -> list[str]:
    registries = [module._diffusers_hook for module in transformer.modules() if hasattr(module, "_diffusers_hook")]
    return [name for registry in registries for name in registry.hooks]


@pytest.mark.parametrize(
    "lever",
    [
        {"step_cache": StepCache(mode="first_block", threshold=0.5)},
        {"step_cache": StepCache(mode="taylorseer", interval=2)},
        {"vae_decoder": "tiny"},
    ],
    ids=["first_block", "taylorseer", "tiny decoder"],
)
def test_flux_runs_diffusers_caches_and_a_tiny_decoder_and_they_leave_nothing(flux, lever):
    fields = {"num_inference_steps": 6, "guidance_scale": 0.0}
    before = _pictures(flux, **fields)[0]
    pulled = _pictures(flux, **fields, **lever)[0]
    after = _pictures(flux, **fields)[0]
    assert pulled.shape == before.shape == (SIZE, SIZE, 3)
    assert not np.array_equal(pulled, before)
    assert np.array_equal(after, before)
    assert _hooks(flux._text_to_image.transformer) == []
    assert "decode" not in flux._text_to_image.vae.__dict__


def test_flux_caches_are_for_text_to_image_alone(flux):
    """diffusers' caches need a cache context that only FLUX's text-to-image pipeline sets."""
    from sdapi.core.params import InitImageInfo

    cache = {"step_cache": StepCache(mode="first_block", threshold=0.05), "guidance_scale": 0.0, "width": SIZE}
    flux.family.check(make_params(**cache))
    with pytest.raises(InvalidParameter, match="只用于文生图") as refused:
        flux.family.check(make_params(init_image=InitImageInfo(SIZE, SIZE, "png"), strength=0.5, **cache))
    assert refused.value.field == "step_cache"


def test_sdxl_runs_deepcache_and_token_merging_and_they_leave_nothing(tiny_sdxl):
    """SDXL's first level has no attention: tomesd merges at the first that has (max_downsample 2 there)."""
    engine = TorchEngine(ModelConfig(path=str(tiny_sdxl), device="cpu", dtype="float32"))
    engine.load()
    before = _pictures(engine)[0]
    for lever in ({"step_cache": DEEPCACHE}, {"token_merging": 0.5}):
        pulled = _pictures(engine, **lever)[0]
        assert pulled.shape == before.shape and not np.array_equal(pulled, before), lever
    assert np.array_equal(_pictures(engine)[0], before)
    _untouched(engine)
