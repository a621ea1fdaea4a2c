"""The high-resolution second pass over HTTP: every upscaler gives the asked size, the seed rule holds through both
passes, progress counts both, neural upscalers from upscalers.dir are listed and used, bad settings are 400s."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdapi.core.request import LATENT_UPSCALERS, PIXEL_UPSCALERS
from tests.support.services import fetch_image, fetch_pixels, generate
from tests.support.upscaler_files import tiny_rrdb, write_rrdb

BODY = {"prompt": "a lighthouse", "width": 96, "height": 64, "num_inference_steps": 4, "seed": 11}


@pytest.fixture(scope="module")
def upscaler_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("upscalers")
    write_rrdb(folder / "tiny-esrgan-4x.pth", tiny_rrdb(scale=4, seed=1), layout="esrgan")
    write_rrdb(folder / "tiny-realesrgan-2x.safetensors", tiny_rrdb(scale=2, seed=2))
    (folder / "broken.pth").write_bytes(b"no network here")
    return folder


@pytest.fixture(scope="module")
def hires_client(make_service, upscaler_dir):
    running = make_service("hires", upscalers={"dir": str(upscaler_dir)}, model={"dtype": "float32"})
    with running.client() as client:
        yield client


def _run(client, **hires):
    result = generate(client, **BODY, hires={"steps": 4, "strength": 0.5, **hires})
    assert result["status"] == "completed", result
    return result


@pytest.mark.parametrize("upscaler", [*LATENT_UPSCALERS, *PIXEL_UPSCALERS, "tiny-esrgan-4x", "tiny-realesrgan-2x"])
def test_every_upscaler_gives_the_asked_size_and_the_same_pixels_again(hires_client, upscaler):
    first = _run(hires_client, upscaler=upscaler, scale=2)
    image = fetch_image(first["result_url"])
    assert image.size == (192, 128)
    again = _run(hires_client, upscaler=upscaler, scale=2)
    assert np.array_equal(fetch_pixels(first["result_url"]), fetch_pixels(again["result_url"]))


def test_the_upscaler_and_the_second_pass_change_the_picture(hires_client):
    pictures = {up: fetch_pixels(_run(hires_client, upscaler=up)["result_url"]) for up in ("lanczos", "tiny-esrgan-4x")}
    assert not np.array_equal(pictures["lanczos"], pictures["tiny-esrgan-4x"])
    plain = generate(hires_client, **(BODY | {"width": 192, "height": 128}))
    assert not np.array_equal(pictures["lanczos"], fetch_pixels(plain["result_url"]))


def test_a_batch_follows_the_seed_rule_and_progress_counts_both_passes(hires_client):
    batch = generate(hires_client, **BODY, num_images=2, hires={"upscaler": "latent", "steps": 6, "strength": 0.5})
    assert batch["status"] == "completed", batch
    single = generate(hires_client, **(BODY | {"seed": 12}), hires={"upscaler": "latent", "steps": 6, "strength": 0.5})
    assert np.array_equal(fetch_pixels(batch["result_urls"][1]), fetch_pixels(single["result_url"]))
    progress = batch["progress"]
    assert progress["total_steps"] == 2 * (4 + 3) and progress["step"] == progress["total_steps"]


def test_the_final_size_from_width_or_height_and_the_record(hires_client):
    result = _run(hires_client, width=240)
    image = fetch_image(result["result_url"])
    assert image.size == (240, 160)
    parameters = image.text["parameters"]
    assert "Hires resize: 240x160" in parameters and "Hires upscaler: latent" in parameters
    assert "Size: 96x64" in parameters  # the first pass, as A1111 records it


def test_the_list_shows_built_in_and_installed_upscalers(hires_client):
    entries = {entry["name"]: entry for entry in hires_client.get("/api/v1/upscalers").json()["upscalers"]}
    assert entries["latent"]["kind"] == "latent" and entries["lanczos"]["kind"] == "pixel"
    assert entries["tiny-esrgan-4x"]["kind"] == "neural" and entries["tiny-esrgan-4x"]["scale"] == 4
    assert entries["tiny-realesrgan-2x"]["scale"] == 2
    assert entries["broken"]["error"] and entries["broken"]["scale"] is None


@pytest.mark.parametrize("upscaler", ["lanczos", "latent"])
def test_a_second_pass_of_no_step_is_the_upscaled_first_pass(hires_client, upscaler):
    """strength x steps under one step (A1111's denoising_strength 0): the picture is the first pass upscaled, as
    image-to-image returns its input at such a strength."""
    plain = fetch_image(generate(hires_client, **BODY)["result_url"]).convert("RGB")
    result = _run(hires_client, upscaler=upscaler, scale=2, strength=0.1)  # 4 steps x 0.1: none
    upscaled = fetch_image(result["result_url"]).convert("RGB")
    assert upscaled.size == (192, 128)
    assert result["progress"]["total_steps"] == result["progress"]["step"] <= 5  # the first pass's steps alone
    expected = plain.resize((192, 128), Image.Resampling.LANCZOS)
    difference = np.abs(np.asarray(upscaled, dtype=float) - np.asarray(expected, dtype=float)).mean()
    if upscaler == "lanczos":
        assert difference == 0.0
    else:  # the latents upscaled, then decoded: near the picture upscaled, not equal to it
        assert 0.0 < difference < 40.0, difference


@pytest.mark.parametrize(
    "body, words",
    [
        ({"hires": {"scale": 4}, "width": 1024, "height": 1024}, "limits.max_width"),
        ({"hires": {"upscaler": "broken"}}, "upscaler"),
        ({"hires": {"upscaler": "ESRGAN_4x"}}, "lanczos"),
        ({"hires": {"width": 100}}, "8"),
        ({"hires": {}, "init_image": "data:image/png;base64,"}, "init_image"),
    ],
)
def test_bad_settings_are_400s_naming_hires(hires_client, body, words):
    response = hires_client.post("/api/v1/generate", json={"prompt": "x", **body})
    if "init_image" in body:  # the init image is checked first: give it a real one
        from tests.support.services import data_url, gradient_image

        body["init_image"] = data_url(gradient_image(64, 64))
        response = hires_client.post("/api/v1/generate", json={"prompt": "x", **body})
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert "hires" in detail and words in detail, detail


def test_hires_scale_out_of_range_is_a_422(hires_client):
    response = hires_client.post("/api/v1/generate", json={"prompt": "x", "hires": {"scale": 5}})
    assert response.status_code == 422, response.text


def test_sd_upscale_on_the_native_api(hires_client):
    """Issue 47, item 7: sd_upscale redraws an upscaled init image tile by tile; image-to-image only."""
    from tests.support.services import data_url, gradient_image

    body = {"prompt": "a harbour", "init_image": data_url(gradient_image(96, 64)), "strength": 0.5, "seed": 3}
    body |= {"num_inference_steps": 4, "width": 64, "height": 64}
    result = generate(hires_client, **body, sd_upscale={"scale": 2, "upscaler": "lanczos", "overlap": 16})
    assert result["status"] == "completed", result
    assert fetch_image(result["result_url"]).size == (192, 128)
    again = generate(hires_client, **body, sd_upscale={"scale": 2, "upscaler": "lanczos", "overlap": 16})
    assert np.array_equal(fetch_pixels(result["result_url"]), fetch_pixels(again["result_url"]))  # the seed rule
    refused = hires_client.post("/api/v1/generate", json={"prompt": "x", "sd_upscale": {"scale": 2}})
    assert refused.status_code == 400 and "sd_upscale" in refused.json()["detail"]


def test_sd_upscale_at_a_strength_of_no_step_is_the_upscaled_picture(hires_client):
    from PIL import Image as PILImage

    from tests.support.services import data_url, gradient_image

    picture = gradient_image(96, 64)
    body = {"prompt": "x", "init_image": data_url(picture), "strength": 0.1, "num_inference_steps": 4, "seed": 1}
    result = generate(hires_client, **body, width=64, height=64, sd_upscale={"scale": 2, "upscaler": "lanczos"})
    assert result["status"] == "completed", result
    expected = np.asarray(picture.convert("RGB").resize((192, 128), PILImage.Resampling.LANCZOS))
    assert np.array_equal(fetch_pixels(result["result_url"]), expected)
