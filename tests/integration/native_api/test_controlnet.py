"""ControlNet units over HTTP on the tiny model: weight 0 is no unit, one unit is what diffusers' own ControlNet
pipeline makes, units compose, the window and modes matter, the preprocessors, and what cannot run is a 400."""

from __future__ import annotations

import base64
import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.adapter_files import model_modules, write_adapter
from tests.support.controlnet_files import tiny_controlnet, write_controlnet, write_tiny_depth_model
from tests.support.services import data_url, fetch_image, fetch_pixels, generate, gradient_image

BODY = {"prompt": "a castle", "width": 64, "height": 64, "num_inference_steps": 4, "guidance_scale": 7.5, "seed": 9}


def _control_picture() -> Image.Image:
    """Shapes with edges for canny and the others to find."""
    picture = Image.new("RGB", (64, 64), (20, 20, 20))
    picture.paste((230, 200, 40), (8, 8, 40, 30))
    picture.paste((40, 90, 220), (24, 36, 60, 60))
    return picture


CONTROL = data_url(_control_picture())


@pytest.fixture(scope="module")
def controlnet_dir(tmp_path_factory, tiny_model, tiny_sdxl):
    folder = tmp_path_factory.mktemp("controlnets")
    write_controlnet(folder / "tiny-edges", tiny_controlnet(tiny_model, seed=1))
    write_controlnet(folder / "tiny-depth.safetensors", tiny_controlnet(tiny_model, seed=2), single_file=True)
    write_controlnet(folder / "tiny-xl", tiny_controlnet(tiny_sdxl, seed=3))
    return folder


@pytest.fixture(scope="module")
def control_client(make_service, controlnet_dir, tiny_model, tmp_path_factory):
    loras = tmp_path_factory.mktemp("controlnet-loras")
    write_adapter(loras / "ink.safetensors", model_modules(tiny_model), "lora", seed=4)
    running = make_service(
        "controlnet", controlnet={"dir": str(controlnet_dir)}, loras={"dir": str(loras)}, model={"dtype": "float32"}
    )
    with running.client() as client:
        yield client


def _run(client, units, **body):
    result = generate(client, **(BODY | body), controlnets=units)
    assert result["status"] == "completed", result
    return result, fetch_pixels(result["result_url"])


def _unit(**unit):
    return {"model": "tiny-edges", "image": CONTROL} | unit


def test_the_library_lists_folders_and_single_files_with_their_family(control_client):
    entries = {entry["name"]: entry for entry in control_client.get("/api/v1/controlnets").json()["controlnets"]}
    assert entries["tiny-edges"]["layout"] == "folder" and entries["tiny-edges"]["family"] == "sd1"
    assert entries["tiny-depth"]["layout"] == "single-file" and entries["tiny-depth"]["family"] == "sd1"
    assert entries["tiny-xl"]["family"] == "sdxl"
    assert all(entry["error"] is None for entry in entries.values())


def test_weight_zero_is_no_unit_and_a_unit_changes_the_picture(control_client):
    _, plain = _run(control_client, None)
    _, zero = _run(control_client, [_unit(weight=0)])
    _, one = _run(control_client, [_unit()])
    assert np.array_equal(plain, zero)
    assert np.abs(one - plain).mean() > 1.0


def test_one_unit_is_what_diffusers_controlnet_pipeline_makes(control_client, controlnet_dir, tiny_model):
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    result, served = _run(control_client, [_unit(weight=0.8)])
    controlnet = ControlNetModel.from_pretrained(controlnet_dir / "tiny-edges")
    pipeline = StableDiffusionControlNetPipeline.from_pretrained(
        tiny_model, controlnet=controlnet, safety_checker=None, torch_dtype=torch.float32
    )
    pipeline.set_progress_bar_config(disable=True)
    expected = pipeline(
        prompt="a castle",
        image=_control_picture(),
        controlnet_conditioning_scale=0.8,
        num_inference_steps=4,
        guidance_scale=7.5,
        width=64,
        height=64,
        generator=torch.Generator("cpu").manual_seed(9),
    ).images[0]
    assert np.abs(served - np.asarray(expected, dtype=np.float64)).max() <= 1.0  # within 1/255
    assert '"Module: none, Model: tiny-edges' in fetch_image(result["result_url"]).text["parameters"]


def test_units_compose_and_the_window_and_modes_matter(control_client):
    _, first = _run(control_client, [_unit()])
    _, second = _run(control_client, [_unit(model="tiny-depth")])
    _, both = _run(control_client, [_unit(), _unit(model="tiny-depth")])
    assert not np.array_equal(both, first) and not np.array_equal(both, second)
    _, windowed = _run(control_client, [_unit(guidance_start=0.5)])
    assert not np.array_equal(windowed, first)
    modes = [_run(control_client, [_unit(control_mode=mode)])[1] for mode in ("prompt", "controlnet")]
    assert not np.array_equal(modes[0], first) and not np.array_equal(modes[1], first)
    assert not np.array_equal(modes[0], modes[1])


def test_a_unit_composes_with_image_to_image_inpainting_and_a_lora(control_client):
    init = data_url(gradient_image(64, 64))
    _, plain = _run(control_client, None, init_image=init, strength=0.8)
    _, controlled = _run(control_client, [_unit()], init_image=init, strength=0.8)
    assert np.abs(controlled - plain).mean() > 1.0
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    _, inpainted = _run(
        control_client, [_unit(preprocessor="inpaint")], init_image=init, mask_image=data_url(mask), mask_blur=0
    )
    original = np.asarray(gradient_image(64, 64), dtype=np.float64)
    outside = np.asarray(mask) == 0
    assert np.array_equal(inpainted[outside], original[outside])
    result, styled = _run(control_client, [_unit()], loras=[{"name": "ink"}])
    assert result["loras"] == [{"name": "ink", "weight": 1.0}]
    assert not np.array_equal(styled, _run(control_client, [_unit()])[1])


def _detect(client, preprocessor, **options):
    response = client.post(
        "/api/v1/controlnets/detect",
        json={"image": CONTROL, "preprocessor": preprocessor, "preprocessor_options": options},
    )
    assert response.status_code == 200, response.text
    payload = response.json()["image"].split(",", 1)[1]
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def test_canny_detect_is_opencvs_canny(control_client):
    detected = np.asarray(_detect(control_client, "canny", low_threshold=50, high_threshold=150).convert("L"))
    expected = cv2.Canny(np.asarray(_control_picture()), 50, 150)
    assert np.array_equal(detected, expected)
    assert detected.any()


@pytest.mark.parametrize("preprocessor", ["none", "invert", "binary", "tile", "shuffle", "scribble_xdog", "color"])
def test_every_preprocessor_makes_a_map_of_the_pictures_size(control_client, preprocessor):
    made = _detect(control_client, preprocessor)
    assert made.size == (64, 64) and made.mode == "RGB"
    if preprocessor == "invert":
        assert np.array_equal(np.asarray(made), 255 - np.asarray(_control_picture()))


@pytest.mark.parametrize(
    "units, words",
    [
        ([_unit(model="tiny-xl")], "SDXL"),
        ([_unit(model="missing")], "tiny-edges"),
        ([_unit()] * 4, "max_units"),
        ([_unit(guidance_start=0.8, guidance_end=0.2)], "guidance_start"),
        ([_unit(preprocessor="sketchy")], "canny"),
        ([_unit(preprocessor="canny", preprocessor_options={"low_threshold": 300})], "low_threshold"),
        ([_unit(preprocessor="canny", preprocessor_options={"sigma": 1})], "sigma"),
        ([_unit(preprocessor="depth")], "annotators"),
        ([_unit(preprocessor="openpose")], "openpose"),
        ([_unit(preprocessor="inpaint")], "mask_image"),
        ([_unit(image="data:image/png;base64,AAAA")], "controlnets[0].image"),
    ],
)
def test_what_cannot_run_is_a_400_naming_the_unit(control_client, units, words):
    response = control_client.post("/api/v1/generate", json={**BODY, "controlnets": units})
    assert response.status_code == 400, response.text
    assert words in response.json()["detail"], response.json()["detail"]


def test_out_of_range_unit_settings_are_422s(control_client):
    for unit in (_unit(weight=2.5), _unit(control_mode="loud"), _unit(resize_mode="zoom")):
        response = control_client.post("/api/v1/generate", json={**BODY, "controlnets": [unit]})
        assert response.status_code == 422, response.text


def test_an_sdxl_controlnet_on_an_sdxl_model(make_service, controlnet_dir, tiny_sdxl):
    running = make_service("controlnet-sdxl", tiny_sdxl, controlnet={"dir": str(controlnet_dir)})
    with running.client() as client:
        _, plain = _run(client, None, num_inference_steps=3)
        _, controlled = _run(client, [_unit(model="tiny-xl")], num_inference_steps=3)
        refused = client.post("/api/v1/generate", json={**BODY, "controlnets": [_unit()]})
    assert np.abs(controlled - plain).mean() > 1.0
    assert refused.status_code == 400 and "SD 1.x/2.x" in refused.json()["detail"]


def test_the_depth_preprocessor_runs_a_transformers_depth_model(make_service, controlnet_dir, tmp_path_factory):
    annotators = tmp_path_factory.mktemp("annotators")
    write_tiny_depth_model(annotators / "depth")
    running = make_service(
        "controlnet-depth", controlnet={"dir": str(controlnet_dir), "annotators_dir": str(annotators)}
    )
    with running.client() as client:
        depth = _detect(client, "depth")
        result = generate(client, **BODY, controlnets=[_unit(model="tiny-depth", preprocessor="depth")])
    assert depth.size == (64, 64) and np.asarray(depth).std() > 0
    assert result["status"] == "completed", result


def test_a_batch_with_a_unit_follows_the_seed_rule(control_client):
    batch = generate(control_client, **(BODY | {"num_images": 2}), controlnets=[_unit()])
    assert batch["status"] == "completed", batch
    _, single = _run(control_client, [_unit()], seed=BODY["seed"] + 1)
    assert np.array_equal(fetch_pixels(batch["result_urls"][1]), single)
