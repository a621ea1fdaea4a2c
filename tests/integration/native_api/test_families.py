"""SD 1.x, SD 2.x (v-prediction) and SDXL over HTTP: detected from disk, each served with the contract's rules."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.services import (
    data_url,
    fetch_image,
    fetch_pixels,
    gradient_image,
    in_process,
    mean_abs_diff,
)
from tests.support.services import generate as run

FAST = {"num_inference_steps": 3}


@pytest.fixture(scope="module", params=["sd15", "sd2-v", "sdxl"])
def family_service(request, tmp_path_factory, tiny_model, tiny_sd2v, tiny_sdxl):
    model = {"sd15": tiny_model, "sd2-v": tiny_sd2v, "sdxl": tiny_sdxl}[request.param]
    # No default size in the config: requests without one get the model's native size.
    with in_process(
        tmp_path_factory.mktemp(f"family-{request.param}"),
        model,
        defaults={"width": None, "height": None, "num_inference_steps": 2},
        model={"dtype": "float32"},
    ) as running:
        yield request.param, running


def test_the_contract_on_each_family(family_service):
    family, service = family_service
    with service.client() as client:
        [listed] = client.get("/api/v1/models").json()["models"]
        expected = {"sd15": ("sd1", 512), "sd2-v": ("sd2", 768), "sdxl": ("sdxl", 1024)}[family]
        assert (listed["family"], listed["native_size"]) == (expected[0], [expected[1]] * 2)
        assert listed["default"] and listed["loaded"] and listed["name"] == "default" and len(listed["sha256"]) == 64
        # Seeds: the same seed, the same pixels; image k of a batch is seed + k.
        first = run(client, prompt="a lighthouse", seed=7, width=64, height=64, num_images=2, **FAST)
        again = run(client, prompt="a lighthouse", seed=8, width=64, height=64, **FAST)
        assert first["status"] == "completed" and first["model"] == "default"
        assert mean_abs_diff(fetch_pixels(first["result_urls"][1]), fetch_pixels(again["result_url"])) <= 1.0
        # Schedulers built from the model's own config (so v-prediction stays v-prediction), JPEG output.
        for scheduler in ("DPMSolverMultistepScheduler", "EulerAncestralDiscreteScheduler", "DDIMScheduler"):
            body = run(
                client, prompt="x", seed=1, width=64, height=64, scheduler=scheduler, output_format="jpg", **FAST
            )
            assert body["status"] == "completed", body
            assert fetch_image(body["result_url"]).format == "JPEG"
        # Image-to-image with strength keeps the input's size.
        source = gradient_image(96, 64)
        changed = run(client, prompt="x", seed=2, init_image=data_url(source), strength=0.6, **FAST)
        assert fetch_image(changed["result_url"]).size == (96, 64)
        assert mean_abs_diff(fetch_pixels(changed["result_url"]), np.asarray(source, dtype=np.float64)) > 1.0


def test_the_native_size_is_the_default(family_service):
    family, service = family_service
    side = {"sd15": 512, "sd2-v": 768, "sdxl": 1024}[family]
    with service.client() as client:
        body = run(client, prompt="native", seed=3, num_inference_steps=1)
    assert body["status"] == "completed", body
    assert fetch_image(body["result_url"]).size == (side, side)
