"""AUTOMATIC1111's ControlNet extension API through the real `webuiapi` client: ControlNetUnit on txt2img and
img2img, controlnet_detect, the model and module lists."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import webuiapi
from PIL import Image

from tests.support.controlnet_files import tiny_controlnet, write_controlnet
from tests.support.ip_adapter_files import write_tiny_ip_adapter
from tests.support.services import API_KEY, gradient_image

# alwayson_scripts={} on every call: webuiapi adds the units to its default argument's dict, which would carry
# them into every later call of the test run.
SMALL = {"width": 64, "height": 64, "steps": 4, "seed": 5, "cfg_scale": 7}


def _control_picture() -> Image.Image:
    picture = Image.new("RGB", (64, 64), (20, 20, 20))
    picture.paste((230, 200, 40), (8, 8, 40, 30))
    return picture


@pytest.fixture(scope="module")
def api(make_service, tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("a1111-controlnets")
    write_controlnet(folder / "tiny-canny", tiny_controlnet(tiny_model, seed=1))
    adapters = tmp_path_factory.mktemp("a1111-ip-adapters")
    write_tiny_ip_adapter(adapters, tiny_model, "tiny-ip", seed=1)
    service = make_service(
        "a1111-controlnet",
        controlnet={"dir": str(folder)},
        ip_adapter={"dir": str(adapters)},
        model={"dtype": "float32"},
    )
    host, port = service.url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), username="anyone", password=API_KEY)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def test_the_extensions_lists(api):
    models = api.controlnet_model_list()
    assert [name.split(" [")[0] for name in models] == ["tiny-canny", "tiny-ip"]
    assert "canny" in api.controlnet_module_list() and "depth_midas" in api.controlnet_module_list()
    assert api.controlnet_version() == 2


def test_a_controlnet_unit_on_txt2img_and_img2img(api):
    model = next(name for name in api.controlnet_model_list() if name.startswith("tiny-canny"))
    plain = api.txt2img(prompt="a castle", alwayson_scripts={}, **SMALL)
    unit = webuiapi.ControlNetUnit(
        image=_control_picture(), module="canny", model=model, threshold_a=50, threshold_b=150
    )
    controlled = api.txt2img(prompt="a castle", controlnet_units=[unit], alwayson_scripts={}, **SMALL)
    assert controlled.image.size == (64, 64)
    assert np.abs(_pixels(controlled.image) - _pixels(plain.image)).mean() > 1.0
    assert "ControlNet 0" in controlled.info["infotexts"][0] and "Module: canny" in controlled.info["infotexts"][0]
    off = webuiapi.ControlNetUnit(image=_control_picture(), module="canny", model=model, enabled=False)
    assert np.array_equal(
        _pixels(api.txt2img(prompt="a castle", controlnet_units=[off], alwayson_scripts={}, **SMALL).image),
        _pixels(plain.image),
    )
    again = api.txt2img(prompt="a castle", controlnet_units=[unit], alwayson_scripts={}, **SMALL)
    assert np.array_equal(_pixels(again.image), _pixels(controlled.image))
    edited = api.img2img(
        images=[gradient_image(64, 64)],
        prompt="x",
        denoising_strength=0.7,
        controlnet_units=[unit],
        alwayson_scripts={},
        **SMALL,
    )
    assert edited.image.size == (64, 64)


def test_an_ip_adapter_unit_is_an_image_prompt(api):
    plain = api.txt2img(prompt="a castle", alwayson_scripts={}, **SMALL)
    adapter = next(name for name in api.controlnet_model_list() if name.startswith("tiny-ip"))
    unit = webuiapi.ControlNetUnit(image=gradient_image(48, 48), module="ip-adapter_clip_sd15", model=adapter)
    prompted = api.txt2img(prompt="a castle", controlnet_units=[unit], alwayson_scripts={}, **SMALL)
    assert np.abs(_pixels(prompted.image) - _pixels(plain.image)).mean() > 1.0
    assert "IP-Adapter" in prompted.info["infotexts"][0]


def test_controlnet_detect_is_opencvs_canny(api):
    detected = api.controlnet_detect(images=[_control_picture()], module="canny", threshold_a=50, threshold_b=150)
    expected = cv2.Canny(np.asarray(_control_picture()), 50, 150)
    # processor_res 512 (webuiapi's default): the picture is scaled to 512 on its short side before the edges
    assert detected.image.size == (512, 512)
    small = api.controlnet_detect(
        images=[_control_picture()], module="canny", processor_res=64, threshold_a=50, threshold_b=150
    )
    assert np.array_equal(np.asarray(small.image.convert("L")), expected)


def test_a_unit_for_a_missing_model_is_a_422(api):
    unit = webuiapi.ControlNetUnit(image=_control_picture(), module="canny", model="control_v11p_sd15_canny [d14c016b]")
    with pytest.raises(RuntimeError) as refused:
        api.txt2img(prompt="x", controlnet_units=[unit], alwayson_scripts={}, **SMALL)
    assert refused.value.args[0] == 422 and "control_v11p_sd15_canny" in refused.value.args[1]
