"""AUTOMATIC1111's inpainting, high-resolution pass, upscaler lists and extras through the real `webuiapi` client."""

from __future__ import annotations

import numpy as np
import pytest
import webuiapi
from PIL import Image, ImageFilter

from tests.support.embedding_files import vectors, write_a1111_pt
from tests.support.services import API_KEY, gradient_image
from tests.support.upscaler_files import tiny_rrdb, write_rrdb

SMALL = {"steps": 4, "cfg_scale": 7, "seed": 3}


@pytest.fixture(scope="module")
def api(make_service, tmp_path_factory):
    upscalers = tmp_path_factory.mktemp("a1111-upscalers")
    write_rrdb(upscalers / "tiny-esrgan-4x.pth", tiny_rrdb(scale=4, seed=1))
    embeddings = tmp_path_factory.mktemp("a1111-embeddings")
    write_a1111_pt(embeddings / "ink-wash.pt", vectors(2, 32, seed=1))
    service = make_service(
        "a1111-editing",
        upscalers={"dir": str(upscalers)},
        embeddings={"dir": str(embeddings)},
        model={"dtype": "float32"},
    )
    host, port = service.url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), username="anyone", password=API_KEY)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


@pytest.mark.parametrize("full_res", [True, False])
@pytest.mark.parametrize("fill", [0, 1, 2, 3])
def test_img2img_with_a_mask_keeps_every_pixel_outside_it(api, full_res, fill):
    picture = gradient_image(96, 64)
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (32, 16, 64, 48))
    result = api.img2img(
        images=[picture],
        mask_image=mask,
        prompt="a red door",
        width=96,
        height=64,
        denoising_strength=0.9,
        inpainting_fill=fill,
        inpaint_full_res=full_res,
        inpaint_full_res_padding=8,
        **SMALL,
    )
    out, original = _pixels(result.image), _pixels(picture)
    kept = np.asarray(mask.filter(ImageFilter.GaussianBlur(4))) == 0  # webuiapi's mask_blur is 4
    assert result.image.size == (96, 64)
    assert np.array_equal(out[kept], original[kept])
    assert np.abs(out[~kept] - original[~kept]).mean() > 5.0


def test_an_inverted_transparent_mask_repaints_the_outside(api):
    picture = gradient_image(64, 64)
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    mask.paste((255, 255, 255, 255), (16, 16, 48, 48))  # opaque square; inverted, the border is repainted
    result = api.img2img(
        images=[picture],
        mask_image=mask,
        prompt="x",
        width=64,
        height=64,
        mask_blur=0,
        inpainting_mask_invert=1,
        **SMALL,
    )
    out, original = _pixels(result.image), _pixels(picture)
    assert np.array_equal(out[16:48, 16:48], original[16:48, 16:48])
    assert np.abs(out[:16] - original[:16]).mean() > 5.0


def test_txt2img_with_enable_hr_gives_the_second_pass_size(api):
    latent = api.txt2img(
        prompt="a harbour",
        width=64,
        height=64,
        enable_hr=True,
        hr_scale=2,
        hr_upscaler="Latent",
        denoising_strength=0.5,
        **SMALL,
    )
    assert latent.image.size == (128, 128)
    again = api.txt2img(
        prompt="a harbour",
        width=64,
        height=64,
        enable_hr=True,
        hr_scale=2,
        hr_upscaler="Latent",
        denoising_strength=0.5,
        **SMALL,
    )
    assert np.array_equal(_pixels(latent.image), _pixels(again.image))
    resized = api.txt2img(
        prompt="a harbour",
        width=64,
        height=64,
        enable_hr=True,
        hr_resize_x=160,
        hr_resize_y=96,
        hr_upscaler="R-ESRGAN 4x+",
        hr_second_pass_steps=4,
        denoising_strength=0.5,
        **SMALL,
    )
    assert resized.image.size == (160, 96)
    assert "Hires upscaler: tiny-esrgan-4x" in resized.info["infotexts"][0]  # A1111's name, mapped to what is here


def test_the_upscaler_lists_and_the_embeddings(api):
    names = [upscaler["name"] for upscaler in api.get_upscalers()]
    assert names == ["None", "Lanczos", "Nearest", "tiny-esrgan-4x"]
    assert [mode["name"] for mode in api.get_latent_upscale_modes()][:2] == ["Latent", "Latent (antialiased)"]
    assert api.get_embeddings()["loaded"]["ink-wash"]["vectors"] == 2


def test_extra_single_image_upscales_and_lanczos_is_pillows(api):
    picture = gradient_image(48, 32)
    lanczos = api.extra_single_image(image=picture, upscaling_resize=2, upscaler_1="Lanczos")
    assert np.array_equal(_pixels(lanczos.image), _pixels(picture.resize((96, 64), Image.Resampling.LANCZOS)))
    neural = api.extra_single_image(image=picture, upscaling_resize=4, upscaler_1="tiny-esrgan-4x")
    assert neural.image.size == (192, 128)
    assert not np.array_equal(_pixels(neural.image), _pixels(picture.resize((192, 128), Image.Resampling.LANCZOS)))
    sized = api.extra_single_image(image=picture, resize_mode=1, upscaling_resize_w=64, upscaling_resize_h=64)
    assert sized.image.size == (64, 64)
    batch = api.extra_batch_images(images=[picture, gradient_image(32, 32)], upscaling_resize=2, upscaler_1="Nearest")
    assert [image.size for image in batch.images] == [(96, 64), (64, 64)]
    with pytest.raises(RuntimeError, match="gfpgan_visibility"):
        api.extra_single_image(image=picture, gfpgan_visibility=0.5)


# -- payloads A1111's clients send (issue 47, item 8) ---------------------------------------------------------------


def test_booleans_where_a1111_has_numbers_are_read_as_0_and_1(api):
    """Clients send `"inpainting_mask_invert": false` (A1111's pydantic reads it as 0): a plain image-to-image."""
    from tests.support.services import data_url

    body = {
        "init_images": [data_url(gradient_image(64, 64))],
        "prompt": "a harbour",
        "denoising_strength": 0.5,
        "inpainting_mask_invert": False,
        "inpainting_fill": False,
        "steps": 4,
        "seed": 5,
    }
    answer = api.session.post(f"{api.baseurl}/img2img", json=body)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["images"]) == 1
    inverted = api.session.post(f"{api.baseurl}/img2img", json={**body, "inpainting_mask_invert": True})
    assert inverted.status_code == 200, inverted.text  # 1 without a mask: nothing to invert, still served


def test_enable_hr_at_denoising_strength_0_answers_the_upscaled_picture(api):
    first = api.txt2img(prompt="a lighthouse", width=64, height=64, **SMALL)
    upscaled = api.txt2img(
        prompt="a lighthouse",
        width=64,
        height=64,
        enable_hr=True,
        hr_scale=2,
        hr_upscaler="Lanczos",
        denoising_strength=0,
        **SMALL,
    )
    assert upscaled.image.size == (128, 128)
    expected = first.image.convert("RGB").resize((128, 128), Image.Resampling.LANCZOS)
    assert np.array_equal(_pixels(upscaled.image), _pixels(expected))


def test_the_options_and_lists_clients_read_are_answered(api):
    options = api.get_options()
    assert options["send_seed"] is True and options["sd_hypernetwork"] == "None"
    api.set_options({"send_seed": False})  # clients toggle it around a call, then restore it
    assert api.get_options()["send_seed"] is False
    api.set_options({"send_seed": True})
    assert api.get_options()["send_seed"] is True
    flags = api.get_cmd_flags()
    assert flags["api"] is True and flags["nowebui"] is True
    assert "a1111-upscalers" in flags["esrgan_models_path"]  # the configured upscalers.dir
    assert api.get_hypernetworks() == [] and api.get_face_restorers() == []
    assert api.get_prompt_styles() == []
    assert [model["name"] for model in api.get_realesrgan_models()] == ["tiny-esrgan-4x"]


def test_the_sd_upscale_script_answers_a_picture_of_the_asked_scale(api):
    """Issue 47, item 7: /scripts lists what exists; SD upscale with A1111's script_args ([info,] overlap,
    upscaler index, scale) upscales and redraws tile by tile; any other script is refused naming the served one."""
    scripts = api.session.get(f"{api.baseurl}/scripts").json()
    assert "sd upscale" in scripts["img2img"] and "controlnet" in scripts["txt2img"]
    picture = gradient_image(64, 64)
    plain = picture.resize((128, 128), Image.Resampling.LANCZOS)
    result = api.img2img(
        images=[picture],
        prompt="a harbour",
        width=64,
        height=64,
        denoising_strength=0.5,
        script_name="SD upscale",
        script_args=["", 16, 1, 2.0],  # overlap 16, upscaler 1 (Lanczos in /upscalers), scale 2
        **SMALL,
    )
    assert result.image.size == (128, 128)
    assert not np.array_equal(_pixels(result.image), _pixels(plain))  # redrawn, not only resized
    neural = api.img2img(
        images=[picture],
        prompt="x",
        width=64,
        height=64,
        denoising_strength=0.3,
        script_name="SD upscale",
        script_args=[8, "tiny-esrgan-4x", 4],
        **SMALL,
    )
    assert neural.image.size == (256, 256)
    with pytest.raises(RuntimeError) as refused:
        api.img2img(images=[picture], prompt="x", script_name="Ultimate SD upscale", **SMALL)
    assert refused.value.args[0] == 422 and "SD upscale" in refused.value.args[1]


def test_what_is_not_served_says_so(api):
    """Issue 47, item 9: no caption or face model ships: interrogate and restore_faces are clear 422s."""
    from tests.support.services import data_url

    answer = api.session.post(f"{api.baseurl}/interrogate", json={"image": data_url(gradient_image(64, 64))})
    assert answer.status_code == 422 and "interrogate" in answer.text
    refused = api.session.post(f"{api.baseurl}/txt2img", json={"prompt": "x", "restore_faces": True, **SMALL})
    assert refused.status_code == 422 and "restore_faces" in refused.text
