"""Which tasks may share a denoising batch: the batch key's rules."""

from __future__ import annotations

import pytest

from sdapi.core.batching import batch_key
from sdapi.core.params import ControlUnitSpec, HiresParams, InitImageInfo, InpaintParams, IpAdapterSpec
from sdapi.core.request import EmbeddingSpec, LoraSpec
from tests.support.factories import make_params

INIT = InitImageInfo(width=512, height=512, format="png")
STYLE = LoraSpec(name="style", weight=0.8, sha256="a" * 64)
OTHER = LoraSpec(name="other", weight=0.5, sha256="b" * 64)


def test_what_each_image_keeps_of_its_own_does_not_change_the_key():
    base = batch_key(make_params())
    assert base is not None
    own = make_params(
        prompt="a different prompt",
        negative_prompt="blurry",
        seed=99,
        num_images=4,
        output_format="jpeg",
        callback_url="http://example.com/hook",
    )
    assert batch_key(own) == base
    # The LoRA set, not the order it was named in.
    assert batch_key(make_params(loras=(STYLE, OTHER))) == batch_key(make_params(loras=(OTHER, STYLE)))


@pytest.mark.parametrize(
    "change",
    [
        {"model": "another"},
        {"width": 768},
        {"height": 768},
        {"num_inference_steps": 30},
        {"guidance_scale": 5.0},
        {"scheduler": "EulerDiscreteScheduler"},
        {"scheduler": "DPMSolverMultistepScheduler", "use_karras_sigmas": True},
        {"scheduler_options": {"timestep_spacing": "trailing"}},
        {"init_image": INIT, "strength": 0.6},
        {"loras": (STYLE,)},
        {"loras": (LoraSpec(name="style", weight=0.4, sha256="a" * 64),)},
        {"embeddings": (EmbeddingSpec(name="thing", sha256="c" * 64),)},
    ],
    ids=lambda change: ",".join(change),
)
def test_what_the_batch_shares_changes_the_key(change):
    assert batch_key(make_params(**change)) not in (None, batch_key(make_params()))


def test_image_to_image_at_another_strength_is_another_batch():
    weak = batch_key(make_params(init_image=INIT, strength=0.3))
    assert weak is not None and weak != batch_key(make_params(init_image=INIT, strength=0.6))
    assert weak == batch_key(make_params(init_image=INIT, strength=0.3, prompt="other", seed=5))


@pytest.mark.parametrize(
    "change",
    [
        {"hires": HiresParams(width=1024, height=1024, upscaler="Latent", steps=10, strength=0.5)},
        {"init_image": INIT, "strength": 0.75, "inpaint": InpaintParams(masked=True)},
        {"controlnets": (ControlUnitSpec(model="canny", sha256="d" * 64, preprocessor="canny"),)},
        {"ip_adapters": (IpAdapterSpec(model="plus", sha256="e" * 64),)},
    ],
    ids=["hires", "inpaint", "controlnet", "ip_adapter"],
)
def test_runs_that_are_not_one_plain_pipeline_call_always_run_alone(change):
    assert batch_key(make_params(**change)) is None


def test_every_field_but_the_named_few_separates_batches():
    """A field added to GenerationParams later is in the key until someone names it as one that may differ."""
    from sdapi.core.batching import MAY_DIFFER, _shared
    from sdapi.core.params import GenerationParams

    assert set(GenerationParams.__struct_fields__) - MAY_DIFFER <= set(_shared(make_params()))
    assert set(GenerationParams.__struct_fields__) > MAY_DIFFER


def test_companions_are_chosen_oldest_first_passing_over_those_too_large():
    from sdapi.core.batching import choose_companions

    assert choose_companions([("a", 2), ("b", 4), ("c", 1), ("d", 1)], room=4) == ["a", "c", "d"]
    assert choose_companions([("a", 5)], room=4) == []
