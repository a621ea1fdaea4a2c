"""Inpainting and outpainting over HTTP: every pixel the (blurred) mask keeps is the init image's, what it repaints
changes, for both areas and every masked_content, on each model family; and bad masks are 400s naming the field."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from tests.support.services import data_url, fetch_pixels, generate, gradient_image

WIDTH, HEIGHT = 96, 64
BOX = (32, 16, 64, 48)  # what the mask repaints


def _mask(mode="L", box=BOX, size=(WIDTH, HEIGHT)):
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    if mode == "RGBA":  # opaque repaints, transparent keeps, whatever the colour
        rgba = Image.new("RGBA", size, (255, 255, 255, 0))
        rgba.putalpha(mask)
        return rgba
    return mask.convert(mode)


def _kept(mask: Image.Image, blur: int) -> np.ndarray:
    """Where the blurred mask keeps every bit of the original."""
    soft = mask if blur == 0 else mask.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(soft) == 0


def _edit(client, init=None, **body):
    init = init or gradient_image(WIDTH, HEIGHT)
    request = {"prompt": "a red door", "init_image": data_url(init), "seed": 5, "strength": 0.9} | body
    result = generate(client, **request)
    assert result["status"] == "completed", result
    first = result["result_url"] or result["result_urls"][0]
    return result, fetch_pixels(first), np.asarray(init.convert("RGB"), dtype=np.float64)


@pytest.mark.parametrize("area", ["whole", "masked"])
@pytest.mark.parametrize("content", ["original", "fill", "latent_noise", "latent_nothing"])
def test_pixels_outside_the_mask_are_the_init_images(client, area, content):
    mask = _mask()
    _, out, init = _edit(client, mask_image=data_url(mask), inpaint_area=area, masked_content=content)
    assert out.shape == init.shape
    kept = _kept(mask, 4)
    assert np.array_equal(out[kept], init[kept])
    repainted = np.asarray(mask) == 255
    assert np.abs(out[repainted] - init[repainted]).mean() > 5.0


def test_masked_content_and_area_change_what_is_painted(client):
    mask = data_url(_mask())
    pictures = {
        (area, content): _edit(client, mask_image=mask, inpaint_area=area, masked_content=content)[1]
        for area in ("whole", "masked")
        for content in ("original", "latent_nothing")
    }
    assert not np.array_equal(pictures["whole", "original"], pictures["whole", "latent_nothing"])
    assert not np.array_equal(pictures["whole", "original"], pictures["masked", "original"])


def test_an_all_black_mask_returns_the_init_image(client):
    _, out, init = _edit(client, mask_image=data_url(Image.new("L", (WIDTH, HEIGHT), 0)))
    assert np.array_equal(out, init)


def test_a_transparent_mask_is_read_by_its_alpha_and_invert_swaps_the_areas(client):
    _, by_luminance, _ = _edit(client, mask_image=data_url(_mask("RGB")), mask_blur=0)
    _, by_alpha, _ = _edit(client, mask_image=data_url(_mask("RGBA")), mask_blur=0)
    assert np.array_equal(by_luminance, by_alpha)
    inverted_mask = Image.eval(_mask(), lambda value: 255 - value)
    _, inverted, init = _edit(client, mask_image=data_url(_mask()), mask_invert=True, mask_blur=0)
    _, explicit, _ = _edit(client, mask_image=data_url(inverted_mask), mask_blur=0)
    assert np.array_equal(inverted, explicit)
    inside = np.asarray(_mask()) == 255
    assert np.array_equal(inverted[inside], init[inside])  # the box is kept now


def test_a_grey_mask_blends_and_a_batch_follows_the_seed_rule(client):
    grey = Image.new("L", (WIDTH, HEIGHT), 128)
    result, _, init = _edit(client, mask_image=data_url(grey), mask_blur=0, num_images=2)
    second = fetch_pixels(result["result_urls"][1])
    _, single, _ = _edit(client, mask_image=data_url(grey), mask_blur=0, seed=6)
    assert np.array_equal(second, single)
    full = np.asarray(_edit(client, mask_image=data_url(Image.new("L", (WIDTH, HEIGHT), 255)), mask_blur=0)[1])
    # Half the repainted picture, half the original: between the two everywhere.
    assert np.abs(single - (init + full) / 2).mean() < np.abs(full - init).mean() / 2


@pytest.mark.parametrize("area", ["whole", "masked"])
@pytest.mark.parametrize("content", ["original", "fill", "latent_noise", "latent_nothing"])
def test_outpainting_grows_the_canvas_and_keeps_the_original(client, area, content):
    margins = {"left": 16, "right": 32, "top": 8}
    _, out, init = _edit(client, outpaint=margins, inpaint_area=area, masked_content=content)
    assert out.shape == (HEIGHT + 8, WIDTH + 48, 3)
    margins = Image.new("L", (WIDTH + 48, HEIGHT + 8), 255)
    margins.paste(0, (16, 8, 16 + WIDTH, 8 + HEIGHT))
    kept = _kept(margins, 4)
    original = np.zeros_like(out)
    original[8:, 16 : 16 + WIDTH] = init
    assert kept[8:, 16 : 16 + WIDTH].mean() > 0.5
    assert np.array_equal(out[kept], original[kept])
    assert out[:8].std() > 1.0  # the new strip is painted, not left flat


def test_outpainting_with_a_mask_repaints_both(client):
    _, out, init = _edit(client, outpaint={"right": 16}, mask_image=data_url(_mask()), mask_blur=0)
    assert out.shape == (HEIGHT, WIDTH + 16, 3)
    inside = np.zeros(out.shape[:2], bool)
    inside[BOX[1] : BOX[3], BOX[0] : BOX[2]] = True
    kept = ~inside
    kept[:, WIDTH:] = False
    assert np.array_equal(out[:, :WIDTH][kept[:, :WIDTH]], init[kept[:, :WIDTH]])
    assert np.abs(out[inside] - init[inside[:, :WIDTH]]).mean() > 5.0


@pytest.mark.parametrize(
    "body, field, words",
    [
        ({"mask_image": data_url(_mask())}, "mask_image", "init_image"),
        ({"outpaint": {"left": 8}}, "outpaint", "init_image"),
        ({"with_init": True, "mask_image": data_url(_mask(size=(64, 64)))}, "mask_image", "64x64"),
        ({"with_init": True, "mask_image": "data:image/png;base64,AAAA"}, "mask_image", "mask_image"),
        ({"with_init": True, "mask_image": "a mask"}, "mask_image", "data:image"),
        ({"with_init": True, "outpaint": {"left": 4}}, "outpaint", "8"),
        ({"with_init": True, "outpaint": {"right": 4096}}, "outpaint", "范围"),
    ],
)
def test_bad_masks_and_margins_are_400s_naming_the_field(client, body, field, words):
    body = dict(body)
    if body.pop("with_init", False):
        body["init_image"] = data_url(gradient_image(WIDTH, HEIGHT))
    response = client.post("/api/v1/generate", json={"prompt": "x", **body})
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert field in detail and words in detail, detail


@pytest.mark.parametrize("body", [{"mask_blur": 65}, {"inpaint_area": "some"}, {"masked_content": "nothing"}])
def test_out_of_range_settings_are_422s(client, body):
    response = client.post("/api/v1/generate", json={"prompt": "x", **body})
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("family_model", ["tiny_sdxl", "tiny_sd2v"])
def test_inpainting_on_the_other_families(make_service, request, family_model):
    running = make_service(f"inpaint-{family_model}", request.getfixturevalue(family_model))
    mask = _mask(box=(16, 16, 48, 48), size=(64, 64))
    with running.client() as client:
        _, out, init = _edit(client, init=gradient_image(64, 64), mask_image=data_url(mask), num_inference_steps=3)
    kept = _kept(mask, 4)
    assert np.array_equal(out[kept], init[kept])
    assert np.abs(out[~kept] - init[~kept]).mean() > 1.0


@pytest.mark.parametrize("checkpoint", ["tiny_sd15_inpaint", "tiny_sdxl_inpaint"])
def test_an_inpainting_checkpoint_loads_and_serves_every_mode(make_service, request, checkpoint):
    running = make_service(f"served-{checkpoint}", request.getfixturevalue(checkpoint))
    mask = _mask(box=(16, 16, 48, 48), size=(64, 64))
    with running.client() as client:
        (model,) = client.get("/api/v1/models").json()["models"]
        assert model["inpainting"] is True and model["loaded"] is True
        text = generate(client, prompt="a castle", width=64, height=64, seed=1, num_inference_steps=3)
        assert text["status"] == "completed" and fetch_pixels(text["result_url"]).shape == (64, 64, 3)
        _, redone, init = _edit(client, init=gradient_image(64, 64), num_inference_steps=3)
        assert np.abs(redone - init).mean() > 1.0
        _, out, init = _edit(client, init=gradient_image(64, 64), mask_image=data_url(mask), num_inference_steps=3)
        _, again, _ = _edit(client, init=gradient_image(64, 64), mask_image=data_url(mask), num_inference_steps=3)
    assert np.array_equal(out, again)
    kept = _kept(mask, 4)
    assert np.array_equal(out[kept], init[kept])
    assert np.abs(out[~kept] - init[~kept]).mean() > 1.0
