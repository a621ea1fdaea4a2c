"""Defaults and rules that turn a request into GenerationParams."""

from __future__ import annotations

import random

import msgspec
import pytest

from sdapi.config import DefaultsConfig, LimitsConfig
from sdapi.core.params import InitImageInfo, check_scheduler_options, output_side, resolve_params
from sdapi.core.request import GenerationRequest, HiresRequest
from sdapi.errors import InvalidParameter

DEFAULTS = DefaultsConfig(
    width=512, height=384, num_inference_steps=30, guidance_scale=7.5, strength=0.75, scheduler="EulerDiscreteScheduler"
)
LIMITS = LimitsConfig(max_width=1024, max_height=1024, max_inference_steps=100)


def resolve(init=None, **fields):
    return resolve_params(GenerationRequest(prompt="p", **fields), DEFAULTS, LIMITS, init, rng=random.Random(1))


def test_nulls_take_the_config_defaults():
    params = resolve()
    assert (params.width, params.height, params.num_inference_steps) == (512, 384, 30)
    assert params.guidance_scale == 7.5 and params.scheduler == "EulerDiscreteScheduler"
    assert params.strength is None and params.output_format == "png" and params.num_images == 1


def test_given_values_win_and_output_format_is_case_insensitive():
    params = resolve(
        width=64,
        height=1024,
        num_inference_steps=100,
        guidance_scale=0.0,
        scheduler="DDIMScheduler",
        output_format="JPEG",
        seed=0,
    )
    assert (params.width, params.height, params.num_inference_steps, params.guidance_scale) == (64, 1024, 100, 0.0)
    assert params.scheduler == "DDIMScheduler" and params.output_format == "jpeg" and params.seed == 0


def test_a_random_seed_is_drawn_when_none_is_given():
    assert resolve().seed == random.Random(1).randint(0, 2**32 - 1)


def test_image_seeds_follow_seed_plus_k():
    assert resolve(seed=10, num_images=4).image_seeds() == [10, 11, 12, 13]


@pytest.mark.parametrize(("field", "value"), [("width", 72 + 4), ("width", 56), ("height", 1032), ("width", 2048)])
def test_sides_must_be_multiples_of_8_within_limits(field, value):
    with pytest.raises(InvalidParameter) as raised:
        resolve(**{field: value})
    assert raised.value.field == field


def test_image_to_image_takes_the_input_size_and_default_strength():
    params = resolve(InitImageInfo(width=517, height=300, format="png"), width=64, height=64)
    assert (params.width, params.height) == (512, 296)
    assert params.strength == 0.75 and params.is_image_to_image


def test_image_to_image_out_of_range_inputs_are_refused():
    for size in [(63, 200), (200, 60), (1100, 200)]:
        with pytest.raises(InvalidParameter) as raised:
            resolve(InitImageInfo(width=size[0], height=size[1], format="png"))
        assert raised.value.field == "init_image"


def test_strength_is_ignored_for_text_to_image():
    assert resolve(strength=0.3).strength is None


@pytest.mark.parametrize(
    ("field", "value"), [("scheduler", "Euler a"), ("output_format", "gif"), ("num_inference_steps", 101)]
)
def test_unservable_values_name_their_field(field, value):
    with pytest.raises(InvalidParameter) as raised:
        resolve(**{field: value})
    assert raised.value.field == field and field in raised.value.message


def test_output_side_rounds_down_to_8():
    assert [output_side(n) for n in (64, 71, 72, 1023)] == [64, 64, 72, 1016]


def test_karras_sigmas_only_for_schedulers_that_have_them():
    assert resolve(use_karras_sigmas=True, scheduler="DPMSolverMultistepScheduler").use_karras_sigmas
    assert not resolve().use_karras_sigmas
    with pytest.raises(InvalidParameter, match="DDIMScheduler 不支持 use_karras_sigmas") as refused:
        resolve(use_karras_sigmas=True, scheduler="DDIMScheduler")
    assert refused.value.field == "use_karras_sigmas"


def test_karras_sigmas_reach_the_scheduler_built_from_the_model_config():
    import diffusers

    from sdapi.engines.schedulers import make_scheduler

    base = {**diffusers.DDIMScheduler().config, "_class_name": "DDIMScheduler"}  # a model whose own scheduler is DDIM
    params = resolve(use_karras_sigmas=True, scheduler="EulerDiscreteScheduler")
    scheduler = make_scheduler(params, base)
    assert type(scheduler).__name__ == "EulerDiscreteScheduler" and scheduler.config.use_karras_sigmas
    assert not make_scheduler(resolve(scheduler="EulerDiscreteScheduler"), base).config.use_karras_sigmas
    own = msgspec.structs.replace(params, scheduler=None)  # the model's DDIM cannot: the engine refuses
    with pytest.raises(InvalidParameter, match="DDIMScheduler"):
        make_scheduler(own, base)


def test_the_scheduler_options_table_matches_diffusers_own_constructors():
    import inspect

    import diffusers

    from sdapi.core.schedulers import ACCEPTED_SCHEDULERS, FLOW_SCHEDULERS, SCHEDULER_OPTIONS

    assert set(SCHEDULER_OPTIONS) == set(ACCEPTED_SCHEDULERS) | set(FLOW_SCHEDULERS)
    for name, options in SCHEDULER_OPTIONS.items():
        accepted = set(inspect.signature(getattr(diffusers, name).__init__).parameters)
        assert options <= accepted, (name, options - accepted)


def test_scheduler_options_are_checked_against_the_chosen_class():
    params = resolve(scheduler="UniPCMultistepScheduler", scheduler_options={"solver_order": 3})
    assert params.scheduler_options == {"solver_order": 3}
    with pytest.raises(InvalidParameter, match="不接受 scheduler_options：clip_sample") as refused:
        resolve(scheduler="EulerDiscreteScheduler", scheduler_options={"clip_sample": True})
    assert refused.value.field == "scheduler_options"


def _edge_values(name: str, scheduler: str) -> list[object]:
    from sdapi.core.schedulers import CLASS_CHOICES, OPTION_SPECS

    spec = OPTION_SPECS[name]
    if spec.kind is bool:
        return [True, False]
    if spec.kind is str:
        return list(CLASS_CHOICES.get((scheduler, name), spec.choices))
    return [spec.minimum if spec.kind is float else int(spec.minimum), spec.maximum]


def test_every_option_value_within_its_bounds_makes_a_schedule():
    """The declared bounds are no wider than diffusers: every edge value of every option a class takes, when the
    checks accept it, builds a 20-step schedule (on SD 1.5's scheduler settings)."""
    import diffusers

    from sdapi.core.schedulers import OPTION_SPECS, SCHEDULER_OPTIONS

    base = {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "steps_offset": 1,
    }
    assert set().union(*SCHEDULER_OPTIONS.values()) <= set(OPTION_SPECS)
    failures = []
    for scheduler, options in SCHEDULER_OPTIONS.items():
        for name in sorted(options):
            for value in _edge_values(name, scheduler):
                try:
                    check_scheduler_options(scheduler, {name: value}, 20)
                except InvalidParameter:
                    continue  # refused at submit: a combination rule of ours
                try:
                    getattr(diffusers, scheduler).from_config(base, **{name: value}).set_timesteps(20)
                except Exception as error:
                    failures.append((scheduler, name, value, f"{type(error).__name__}: {error}"))
    assert not failures, failures


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"solver_order": 0}, "solver_order=0"),
        ({"solver_order": 10**12}, "solver_order"),
        ({"solver_order": True}, "须为整数"),
        ({"steps_offset": 2**63}, "steps_offset"),
        ({"prediction_type": 5}, "prediction_type"),
        ({"timestep_spacing": "sideways"}, "timestep_spacing"),
        ({"use_karras_sigmas": "yes"}, "true 或 false"),
        ({"use_karras_sigmas": True, "use_beta_sigmas": True}, "sigma"),
    ],
)
def test_scheduler_option_values_outside_their_bounds_are_refused(options, fragment):
    with pytest.raises(InvalidParameter, match=fragment) as refused:
        resolve(scheduler="DPMSolverMultistepScheduler", scheduler_options=options)
    assert refused.value.field == "scheduler_options"


def test_lcm_options_are_bounded():
    with pytest.raises(InvalidParameter, match="original_inference_steps"):
        resolve(scheduler="LCMScheduler", scheduler_options={"original_inference_steps": 0})
    assert resolve(scheduler="LCMScheduler", scheduler_options={"original_inference_steps": 50}).scheduler_options


def test_vae_tiling_is_asked_for_or_comes_with_a_large_picture():
    def resolved(above, **fields):
        request = GenerationRequest(prompt="p", **fields)
        return resolve_params(request, DEFAULTS, LIMITS, None, rng=random.Random(1), tiling_above=above).vae_tiling

    assert resolved(None, width=1024, height=1024) is False  # never unless asked
    assert resolved(None, vae_tiling=True) is True
    assert resolved(512 * 512, width=512, height=512) is False  # not past the count
    assert resolved(512 * 512, width=512, height=520) is True
    assert resolved(512 * 512, width=1024, height=1024, vae_tiling=False) is False  # the request's word wins
    hires = HiresRequest(scale=2.0, upscaler="lanczos")
    assert resolved(512 * 512, width=256, height=256, hires=hires) is False  # its final 512 x 512
    assert resolved(100 * 100, width=256, height=256, hires=hires) is True
