"""Generation on the torch engine through the API: seeds, batches, image-to-image, schedulers, formats."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from sdapi.core.schedulers import ACCEPTED_SCHEDULERS
from sdapi.media.provenance import read_embedded
from tests.support.services import data_url, fetch_image, fetch_pixels, generate, gradient_image, mean_abs_diff


def _pixels(body, index=None):
    url = body["result_url"] if index is None else body["result_urls"][index]
    return fetch_pixels(url)


def test_same_seed_and_parameters_give_identical_pixels(client):
    first = generate(client, prompt="a lighthouse", seed=1234, num_inference_steps=5)
    second = generate(client, prompt="a lighthouse", seed=1234, num_inference_steps=5)
    assert np.array_equal(_pixels(first), _pixels(second))


def test_different_seeds_give_different_pictures(client):
    first = generate(client, prompt="a lighthouse", seed=1)
    second = generate(client, prompt="a lighthouse", seed=2)
    assert mean_abs_diff(_pixels(first), _pixels(second)) > 1.0


def test_image_k_of_a_batch_matches_a_single_request_with_seed_plus_k(client):
    # 6 images with batch_size 4: two batches, so the rule also holds across the batch boundary.
    batch = generate(client, prompt="a lighthouse", seed=500, num_images=6)
    assert batch["status"] == "completed"
    for k in range(6):
        single = generate(client, prompt="a lighthouse", seed=500 + k)
        assert mean_abs_diff(_pixels(batch, k), _pixels(single)) <= 1.0, k
    assert mean_abs_diff(_pixels(batch, 0), _pixels(batch, 1)) > 1.0


def test_without_a_seed_one_is_drawn_stored_and_reproducible(client):
    drawn = generate(client, prompt="a lighthouse")
    other = generate(client, prompt="a lighthouse")
    assert isinstance(drawn["seed"], int) and 0 <= drawn["seed"] < 2**32
    assert drawn["seed"] != other["seed"]
    replay = generate(client, prompt="a lighthouse", seed=drawn["seed"])
    assert np.array_equal(_pixels(drawn), _pixels(replay))


def test_prompt_negative_prompt_and_guidance_change_the_picture(client):
    base = _pixels(generate(client, prompt="a lighthouse", seed=77))
    for change in [
        {"prompt": "a red bicycle"},
        {"negative_prompt": "blurry, dark"},
        {"guidance_scale": 12.0},
        {"num_inference_steps": 6},
    ]:
        changed = _pixels(generate(client, **{"prompt": "a lighthouse", "seed": 77, **change}))
        assert mean_abs_diff(base, changed) > 0.1, change


def test_width_and_height_set_the_text_to_image_size(client):
    body = generate(client, prompt="a lighthouse", seed=3, width=200, height=64)
    assert fetch_image(body["result_url"]).size == (200, 64)


@pytest.mark.parametrize(
    ("output_format", "pil_format", "content_type"),
    [
        ("png", "PNG", "image/png"),
        ("jpg", "JPEG", "image/jpeg"),
        ("jpeg", "JPEG", "image/jpeg"),
        ("JPG", "JPEG", "image/jpeg"),
        ("webp", "WEBP", "image/webp"),
    ],
)
def test_output_formats(client, output_format, pil_format, content_type):
    body = generate(client, prompt="a lighthouse", seed=3, output_format=output_format, num_images=2)
    for url in body["result_urls"]:
        assert url.endswith("." + output_format.lower())
        response = httpx.get(url)
        assert response.headers["content-type"] == content_type
        image = Image.open(io.BytesIO(response.content))
        assert image.format == pil_format
        assert image.size == (128, 96)


def test_webp_carries_the_generation_record_and_output_compression_sets_its_quality(client):
    body = generate(client, prompt="a lighthouse", seed=5, output_format="webp")
    raw = httpx.get(body["result_url"]).content
    assert raw[:4] == b"RIFF" and raw[8:12] == b"WEBP"
    infotext, record = read_embedded(raw)
    assert infotext is not None and infotext.startswith("a lighthouse\n")
    assert record is not None and json.loads(record)["seed"] == 5
    sizes = []
    for quality in (5, 95):
        body = generate(client, prompt="a lighthouse", seed=5, output_format="webp", output_compression=quality)
        sizes.append(len(httpx.get(body["result_url"]).content))
    assert sizes[0] < sizes[1]  # a lower quality, a smaller file of the same picture
    refused = client.post("/api/v1/generate", json={"prompt": "x", "output_compression": 50})
    assert refused.status_code == 400 and "output_compression" in refused.json()["detail"]


@pytest.mark.parametrize("scheduler", ACCEPTED_SCHEDULERS)
def test_every_scheduler_generates_and_is_deterministic(client, scheduler):
    first = generate(client, prompt="a lighthouse", seed=11, scheduler=scheduler, num_images=2)
    assert first["status"] == "completed", first
    second = generate(client, prompt="a lighthouse", seed=11, scheduler=scheduler, num_images=2)
    for k in range(2):
        assert np.array_equal(_pixels(first, k), _pixels(second, k))


def test_schedulers_differ_and_do_not_leak_into_the_next_request(client):
    default_before = _pixels(generate(client, prompt="a lighthouse", seed=21))
    euler_a = _pixels(generate(client, prompt="a lighthouse", seed=21, scheduler="EulerAncestralDiscreteScheduler"))
    ddim = _pixels(generate(client, prompt="a lighthouse", seed=21, scheduler="DDIMScheduler"))
    default_after = _pixels(generate(client, prompt="a lighthouse", seed=21))
    assert mean_abs_diff(default_before, euler_a) > 0.1
    assert mean_abs_diff(euler_a, ddim) > 0.1
    assert np.array_equal(default_before, default_after)


# -- image-to-image -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_image_to_image_takes_the_input_size_rounded_down_to_8(client, image_format):
    init = data_url(gradient_image(130, 101), image_format)
    body = generate(client, prompt="anime style", init_image=init, width=512, height=512, seed=4, strength=0.6)
    assert body["status"] == "completed", body
    assert fetch_image(body["result_url"]).size == (128, 96)  # width/height ignored, as the seed says


def test_image_to_image_is_deterministic_and_depends_on_strength(client):
    init = data_url(gradient_image(128, 128))
    weak = generate(client, prompt="anime style", init_image=init, seed=4, strength=0.3, num_inference_steps=10)
    again = generate(client, prompt="anime style", init_image=init, seed=4, strength=0.3, num_inference_steps=10)
    strong = generate(client, prompt="anime style", init_image=init, seed=4, strength=0.9, num_inference_steps=10)
    assert np.array_equal(_pixels(weak), _pixels(again))
    assert mean_abs_diff(_pixels(weak), _pixels(strong)) > 0.1


def test_image_to_image_batch_follows_the_seed_rule(client):
    init = data_url(gradient_image(96, 96))
    batch = generate(client, prompt="anime style", init_image=init, seed=900, num_images=3, strength=0.7)
    for k in range(3):
        single = generate(client, prompt="anime style", init_image=init, seed=900 + k, strength=0.7)
        assert mean_abs_diff(_pixels(batch, k), _pixels(single)) <= 1.0


def test_strength_zero_returns_the_input_unchanged(client):
    source = gradient_image(136, 72)
    body = generate(client, prompt="anime style", init_image=data_url(source), strength=0.0, seed=1)
    assert body["status"] == "completed"
    assert np.array_equal(_pixels(body), np.asarray(source, dtype=np.float64))


def test_image_to_image_uses_the_configured_default_strength(client):
    init = data_url(gradient_image(96, 96))
    implicit = generate(client, prompt="anime style", init_image=init, seed=5)
    explicit = generate(client, prompt="anime style", init_image=init, seed=5, strength=0.75)
    assert np.array_equal(_pixels(implicit), _pixels(explicit))


def test_scheduler_options_change_the_schedule_and_unknown_ones_are_refused(client):
    base = {"prompt": "a lighthouse", "seed": 31, "scheduler": "DPMSolverMultistepScheduler"}
    plain = _pixels(generate(client, **base))
    trailing = generate(client, **base, scheduler_options={"timestep_spacing": "trailing", "use_lu_lambdas": True})
    assert trailing["status"] == "completed", trailing
    assert mean_abs_diff(plain, _pixels(trailing)) > 1.0
    karras = _pixels(generate(client, **base, scheduler_options={"use_karras_sigmas": True}))
    assert np.array_equal(karras, _pixels(generate(client, **base, use_karras_sigmas=True)))
    unknown = client.post(
        "/api/v1/generate",
        json={**base, "scheduler": "DDIMScheduler", "scheduler_options": {"use_karras_sigmas": True}},
    )
    assert unknown.status_code == 400
    assert unknown.json()["detail"].startswith("DDIMScheduler 不接受 scheduler_options：use_karras_sigmas。可用：")
    bad_value = client.post("/api/v1/generate", json={**base, "scheduler_options": {"timestep_spacing": "sideways"}})
    assert bad_value.status_code == 400 and "timestep_spacing" in bad_value.json()["detail"]


def test_clip_skip_changes_the_picture_and_is_recorded(client):
    """Issue 47, item 2: clip_skip in A1111's numbering (1: the last layer), recorded as A1111 writes it."""
    plain = generate(client, prompt="a lighthouse", seed=6)
    skipped = generate(client, prompt="a lighthouse", seed=6, clip_skip=2)
    assert skipped["status"] == "completed"
    assert not np.array_equal(_pixels(plain), _pixels(skipped))
    infotext, record = read_embedded(httpx.get(skipped["result_url"]).content)
    assert infotext is not None and "Clip skip: 2" in infotext
    assert record is not None and json.loads(record)["clip_skip"] == 2
    for bad in (0, 13):
        response = client.post("/api/v1/generate", json={"prompt": "x", "clip_skip": bad})
        assert response.status_code == 422 and "clip_skip" in response.text


def test_variation_seeds_on_the_native_api(client):
    """Issue 47, item 4: variation_seed and variation_strength; text-to-image only."""
    plain = generate(client, prompt="a lighthouse", seed=30)
    other = generate(client, prompt="a lighthouse", seed=31)
    varied = generate(client, prompt="a lighthouse", seed=30, variation_seed=31, variation_strength=1.0)
    assert np.array_equal(_pixels(varied), _pixels(other))
    random_variation = generate(client, prompt="a lighthouse", seed=30, variation_strength=0.3)
    assert not np.array_equal(_pixels(random_variation), _pixels(plain))
    _, record = read_embedded(httpx.get(random_variation["result_url"]).content)
    assert record is not None and json.loads(record)["variation_seed"] is not None  # drawn, and recorded
    refused = client.post(
        "/api/v1/generate",
        json={"prompt": "x", "init_image": data_url(gradient_image(64, 64)), "variation_strength": 0.5},
    )
    assert refused.status_code == 400 and "variation_seed" in refused.json()["detail"]
