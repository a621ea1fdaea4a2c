"""Settings of each denoising step (issue 47, item 9): DDIM's eta and Euler's stochastic churn, honoured on the
schedulers that take them, with the seed rule kept (their extra noise comes from the request's generators)."""

from __future__ import annotations

import numpy as np
import pytest

from sdapi.config import ModelConfig
from sdapi.engines import Run
from sdapi.engines.torch_engine import TorchEngine
from sdapi.errors import GenerationFailed, InvalidParameter
from tests.support.factories import make_params

FIELDS = {"prompt": "a red ball on grass", "width": 64, "height": 64, "num_inference_steps": 5, "seed": 8}


@pytest.fixture(scope="module")
def sd15(tiny_model):
    engine = TorchEngine(ModelConfig(path=str(tiny_model), device="cpu", dtype="float32"))
    engine.load()
    return engine


def _picture(engine, **fields) -> np.ndarray:
    return np.asarray(engine.generate(Run(make_params(**{**FIELDS, **fields}))).images[0])


def test_ddim_eta(sd15):
    plain = _picture(sd15, scheduler="DDIMScheduler")
    assert np.array_equal(_picture(sd15, scheduler="DDIMScheduler", step_options={"eta": 0.0}), plain)
    noisy = _picture(sd15, scheduler="DDIMScheduler", step_options={"eta": 1.0})
    assert not np.array_equal(noisy, plain)
    assert np.array_equal(noisy, _picture(sd15, scheduler="DDIMScheduler", step_options={"eta": 1.0}))  # seeded


def test_euler_churn(sd15):
    plain = _picture(sd15, scheduler="EulerDiscreteScheduler")
    churned = _picture(sd15, scheduler="EulerDiscreteScheduler", step_options={"s_churn": 40.0, "s_noise": 1.0})
    assert not np.array_equal(churned, plain)
    again = _picture(sd15, scheduler="EulerDiscreteScheduler", step_options={"s_churn": 40.0, "s_noise": 1.0})
    assert np.array_equal(churned, again)


def test_a_setting_the_scheduler_does_not_take_is_refused(sd15):
    with pytest.raises((InvalidParameter, GenerationFailed)) as refused:
        sd15.generate(Run(make_params(**FIELDS, scheduler="PNDMScheduler", step_options={"eta": 0.5})))
    assert "step_options" in str(refused.value) or "eta" in str(refused.value)
