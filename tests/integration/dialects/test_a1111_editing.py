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
