"""IP-Adapter image prompts over HTTP on the tiny model: weight 0 is no image prompt, weight 1 changes the picture
(and again the next time the same way), a plain request after one is the plain picture, and mismatches are 400s."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.support.ip_adapter_files import write_tiny_ip_adapter
from tests.support.services import data_url, fetch_pixels, generate, gradient_image

BODY = {"prompt": "a castle", "width": 64, "height": 64, "num_inference_steps": 4, "seed": 3}
REFERENCE = data_url(gradient_image(48, 48))


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_model, tiny_sdxl):
    folder = tmp_path_factory.mktemp("ip-adapters")
    write_tiny_ip_adapter(folder, tiny_model, "tiny-ip", seed=1)
    write_tiny_ip_adapter(folder / "sdxl_models", tiny_sdxl, "tiny-ip-xl", seed=2)
    (folder / "broken.safetensors").write_bytes(b"not an adapter")
    return folder


@pytest.fixture(scope="module")
def ip_client(make_service, adapter_dir):
    running = make_service("ip-adapter", ip_adapter={"dir": str(adapter_dir)}, model={"dtype": "float32"})
    with running.client() as client:
        yield client


def _run(client, prompts, **body):
    result = generate(client, **(BODY | body), ip_adapters=prompts)
    assert result["status"] == "completed", result
    return fetch_pixels(result["result_url"])


def test_the_library_lists_adapters_with_their_width(ip_client):
    entries = {entry["name"]: entry for entry in ip_client.get("/api/v1/ip-adapters").json()["ip_adapters"]}
    assert entries["tiny-ip"]["kind"] == "ip-adapter" and entries["tiny-ip"]["cross_attention_dim"] == 32
    assert entries["tiny-ip-xl"]["cross_attention_dim"] == 64 and entries["tiny-ip-xl"]["error"] is None
    assert entries["broken"]["error"]


def test_weight_zero_is_no_image_prompt_and_weight_one_changes_the_picture(ip_client):
    plain = _run(ip_client, None)
    zero = _run(ip_client, [{"model": "tiny-ip", "image": REFERENCE, "weight": 0}])
    one = _run(ip_client, [{"model": "tiny-ip", "image": REFERENCE, "weight": 1}])
    again = _run(ip_client, [{"model": "tiny-ip", "image": REFERENCE, "weight": 1}])
    other = _run(ip_client, [{"model": "tiny-ip", "image": data_url(Image.new("RGB", (48, 48), (200, 0, 0)))}])
    after = _run(ip_client, None)
    assert np.array_equal(plain, zero)
    assert np.abs(one - plain).mean() > 1.0 and np.array_equal(one, again)
    assert not np.array_equal(one, other)  # it follows the picture, not just its presence
    assert np.array_equal(after, plain)  # unloaded after the run: nothing stays in the UNet


def test_an_image_prompt_with_image_to_image(ip_client):
    init = data_url(gradient_image(64, 64))
    plain = _run(ip_client, None, init_image=init, strength=0.8)
    prompted = _run(ip_client, [{"model": "tiny-ip", "image": REFERENCE}], init_image=init, strength=0.8)
    assert np.abs(prompted - plain).mean() > 1.0


@pytest.mark.parametrize(
    "prompt, words",
    [
        ({"model": "tiny-ip-xl", "image": REFERENCE}, "64"),
        ({"model": "missing", "image": REFERENCE}, "tiny-ip"),
        ({"model": "broken", "image": REFERENCE}, "broken"),
        ({"model": "tiny-ip", "image": "data:image/png;base64,AAAA"}, "ip_adapters[0].image"),
    ],
)
def test_what_cannot_run_is_a_400(ip_client, prompt, words):
    response = ip_client.post("/api/v1/generate", json={**BODY, "ip_adapters": [prompt]})
    assert response.status_code == 400, response.text
    assert words in response.json()["detail"]


def test_an_sdxl_image_prompt_on_an_sdxl_model(make_service, adapter_dir, tiny_sdxl):
    """The SDXL adapter, with the image encoder of its own sdxl_models/ folder."""
    running = make_service("ip-adapter-sdxl", tiny_sdxl, ip_adapter={"dir": str(adapter_dir)})
    with running.client() as client:
        plain = _run(client, None, num_inference_steps=3)
        prompted = _run(client, [{"model": "tiny-ip-xl", "image": REFERENCE}], num_inference_steps=3)
        refused = client.post(
            "/api/v1/generate", json={**BODY, "ip_adapters": [{"model": "tiny-ip", "image": REFERENCE}]}
        )
    assert np.abs(prompted - plain).mean() > 1.0
    assert refused.status_code == 400 and "32" in refused.json()["detail"]
