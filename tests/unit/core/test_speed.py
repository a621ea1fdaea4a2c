"""Which speed levers a run gets (issue 48, sdapi.core.speed): the request's word, refused where the model cannot run
it; else the config's default, left out where the model cannot run it; a step cache's fields filled per mode."""

from __future__ import annotations

import pytest

from sdapi.config import DefaultsConfig
from sdapi.core.request import GenerationRequest, StepCache
from sdapi.core.speed import EVERYTHING, SpeedSupport, speed_levers
from sdapi.errors import InvalidParameter

UNET = SpeedSupport(label="SD 1.x", tiny_decoder=False, step_caches=("deepcache",), token_merging=True)
FLUX = SpeedSupport(label="FLUX.1", tiny_decoder=True, step_caches=("first_block", "taylorseer"), token_merging=False)
ONNX = SpeedSupport(label="SD 1.x", none_because="ONNX 导出是固定的计算图")


def levers(support=EVERYTHING, defaults=None, **fields):
    return speed_levers(GenerationRequest(prompt="p", **fields), defaults or DefaultsConfig(), support)


def test_nothing_asked_and_no_defaults_is_the_plain_run():
    plain = levers()
    assert (plain.vae_decoder, plain.step_cache, plain.token_merging) == ("full", None, 0.0)


def test_a_step_cache_gets_its_modes_defaults_and_refuses_other_modes_fields():
    assert levers(step_cache=StepCache(mode="deepcache")).step_cache == StepCache(
        mode="deepcache", interval=3, branch=0
    )
    assert levers(step_cache=StepCache(mode="deepcache", interval=5, branch=2)).step_cache == StepCache(
        mode="deepcache", interval=5, branch=2
    )
    assert levers(step_cache=StepCache(mode="first_block")).step_cache == StepCache(mode="first_block", threshold=0.05)
    assert levers(step_cache=StepCache(mode="taylorseer")).step_cache == StepCache(mode="taylorseer", interval=5)
    with pytest.raises(InvalidParameter, match="不接受 threshold") as refused:
        levers(step_cache=StepCache(mode="deepcache", threshold=0.1))
    assert refused.value.field == "step_cache"
    with pytest.raises(InvalidParameter, match="不接受 branch"):
        levers(step_cache=StepCache(mode="taylorseer", branch=1))


def test_a_lever_the_model_cannot_run_is_refused_naming_the_family():
    with pytest.raises(InvalidParameter, match=r"SD 1\.x.*没有微型解码器") as refused:
        levers(UNET, vae_decoder="tiny")
    assert refused.value.field == "vae_decoder"
    with pytest.raises(InvalidParameter, match=r"FLUX\.1.*first_block, taylorseer"):
        levers(FLUX, step_cache=StepCache(mode="deepcache"))
    with pytest.raises(InvalidParameter, match="UNet") as refused:
        levers(FLUX, token_merging=0.5)
    assert refused.value.field == "token_merging"
    with pytest.raises(InvalidParameter, match="ONNX"):
        levers(ONNX, step_cache=StepCache(mode="deepcache"))
    # Turning a lever off is always fine.
    off = levers(ONNX, vae_decoder="full", token_merging=0.0, step_cache=StepCache(mode="off"))
    assert (off.vae_decoder, off.step_cache, off.token_merging) == ("full", None, 0.0)


def test_config_defaults_apply_where_the_model_can_run_them_and_are_left_out_elsewhere():
    defaults = DefaultsConfig(vae_decoder="tiny", step_cache=StepCache(mode="deepcache", interval=4), token_merging=0.3)
    on_unet = levers(UNET, defaults)
    assert on_unet.vae_decoder == "full"  # no tiny decoder for it: left out, not refused
    assert on_unet.step_cache == StepCache(mode="deepcache", interval=4, branch=0)
    assert on_unet.token_merging == 0.3
    on_flux = levers(FLUX, defaults)
    assert (on_flux.vae_decoder, on_flux.step_cache, on_flux.token_merging) == ("tiny", None, 0.0)
    on_onnx = levers(ONNX, defaults)
    assert (on_onnx.vae_decoder, on_onnx.step_cache, on_onnx.token_merging) == ("full", None, 0.0)
    # The request's word wins over a default, off included.
    asked = levers(UNET, defaults, step_cache=StepCache(mode="off"), token_merging=0.0)
    assert asked.step_cache is None and asked.token_merging == 0.0


def test_the_listing_says_what_runs():
    assert UNET.as_listing() == {"vae_decoder": ["full"], "step_cache": ["deepcache"], "token_merging": True}
    assert FLUX.as_listing() == {
        "vae_decoder": ["full", "tiny"],
        "step_cache": ["first_block", "taylorseer"],
        "token_merging": False,
    }
    assert ONNX.as_listing() == {"vae_decoder": ["full"], "step_cache": [], "token_merging": False}


def test_a_deepcache_branch_past_the_unet_is_refused_when_its_files_tell():
    four_levels = SpeedSupport(label="SD 1.x", step_caches=("deepcache",), deepcache_branches=12)
    assert levers(four_levels, step_cache=StepCache(mode="deepcache", branch=11)).step_cache.branch == 11
    with pytest.raises(InvalidParameter, match="0 到 11"):
        levers(four_levels, step_cache=StepCache(mode="deepcache", branch=12))


def test_a_named_vae_decodes_so_the_tiny_decoder_is_refused_beside_it_or_left_out():
    with pytest.raises(InvalidParameter, match="vae") as refused:
        levers(vae_decoder="tiny", vae="warm-vae")
    assert refused.value.field == "vae_decoder"
    assert levers(defaults=DefaultsConfig(vae_decoder="tiny"), vae="warm-vae").vae_decoder == "full"
    assert levers(defaults=DefaultsConfig(vae_decoder="tiny")).vae_decoder == "tiny"
