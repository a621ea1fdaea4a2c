"""Hostile and careless input on every surface answers 4xx in that surface's own error shape, never a 500: numbers
a dialect parses by hand, multipart fields taken on trust, unhashable values where a name is expected, scheduler
options without bounds, and images whose size only shows once decoded. Several values per class, not one example."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from tests.support.services import API_KEY, data_url, gradient_image

BEARER = {"Authorization": f"Bearer {API_KEY}"}
KEY = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def service(make_service):
    return make_service("hostile", limits={"max_init_image_pixels": 4096 * 4096})


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A 13000x13000 1-bit PNG: a few hundred KB on the wire, 169 megapixels once decoded."""
    buffer = io.BytesIO()
    Image.new("1", (13000, 13000)).save(buffer, format="PNG")
    return buffer.getvalue()


def _png(width: int = 64, height: int = 64) -> bytes:
    buffer = io.BytesIO()
    gradient_image(width, height).save(buffer, format="PNG")
    return buffer.getvalue()


def _openai_error(response: httpx.Response, status: int = 400) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


def _a1111_error(response: httpx.Response, status: int = 422) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail", "body", "errors"}, body
    return dict(body)


@pytest.mark.parametrize(
    "size", ["²x²", "1" * 5000 + "x1", "５１２x５１２", "512x", "x512", "-8x8", "512X512", "5e2x5e2"]
)
def test_openai_sizes_that_are_not_two_ascii_numbers_are_400(service, size):
    response = httpx.post(f"{service.url}/v1/images/generations", json={"prompt": "a", "size": size}, headers=BEARER)
    error = _openai_error(response)
    assert error["param"] == "size"


def test_openai_sizes_out_of_range_are_400_in_openais_shape(service):
    for size in ("0x0", "99999x99999", "8x8"):
        response = httpx.post(
            f"{service.url}/v1/images/generations", json={"prompt": "a", "size": size}, headers=BEARER
        )
        _openai_error(response)


def _edit(service, data, files):
    return httpx.post(f"{service.url}/v1/images/edits", data=data, files=files, headers=BEARER, timeout=60)


@pytest.mark.parametrize(
    ("data", "extra_files", "param"),
    [
        ({"prompt": "a", "strength": ["0.5", "0.6"]}, [], "strength"),
        ({"prompt": "a"}, [("strength", ("s.txt", b"0.5", "text/plain"))], "strength"),
        ({"prompt": "a", "strength": "nan"}, [], "strength"),
        ({"prompt": "a", "strength": "inf"}, [], "strength"),
        ({"prompt": "a", "strength": "1e999"}, [], "strength"),
        ({"prompt": "a", "strength": "٠.٥"}, [], "strength"),
        ({"prompt": ["a", "b"]}, [], "prompt"),
        ({"prompt": "a", "n": ["1", "2"]}, [], "n"),
    ],
)
def test_openai_multipart_fields_sent_twice_as_files_or_not_numbers_are_400(service, data, extra_files, param):
    files = [("image", ("in.png", _png(), "image/png")), *extra_files]
    error = _openai_error(_edit(service, data, files))
    assert error["param"] == param


@pytest.mark.parametrize(
    "part",
    [
        b'Content-Disposition: form-data; name="prompt"\r\nContent-Type: text/plain; charset=klingon\r\n\r\na cat',
        b'Content-Disposition: form-data; name="prompt"\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\xff\xfe\xfa',
        b'Content-Disposition: form-data; name="prompt"\r\n\r\n\xc3\x28 not utf-8',
    ],
)
def test_openai_multipart_parts_that_do_not_decode_are_400(service, part):
    boundary = b"sdapi-hostile-boundary"
    image = (
        b'Content-Disposition: form-data; name="image"; filename="in.png"\r\nContent-Type: image/png\r\n\r\n' + _png()
    )
    body = (
        b"".join(b"--" + boundary + b"\r\n" + item + b"\r\n" for item in (part, image)) + b"--" + boundary + b"--\r\n"
    )
    response = httpx.post(
        f"{service.url}/v1/images/edits",
        content=body,
        headers={**BEARER, "Content-Type": f"multipart/form-data; boundary={boundary.decode()}"},
    )
    assert 400 <= response.status_code < 500, response.text
    assert "error" in response.json()


def _a1111(service, path, body):
    return httpx.post(f"{service.url}/sdapi/v1/{path}", json=body, headers=KEY, timeout=60)


@pytest.mark.parametrize("side", [10**9, 2**31, 2**63, 2**70, -1, 7])
def test_a1111_resize_targets_beyond_the_limits_are_422(service, side):
    init = base64.b64encode(_png(80, 80)).decode()
    for size in ({"width": side, "height": 64}, {"width": 64, "height": side}):
        _a1111_error(_a1111(service, "img2img", {"prompt": "a", "init_images": [init], **size}))


@pytest.mark.parametrize("side", [10**9, 2**31, 2**63])
def test_a1111_txt2img_sizes_beyond_the_limits_are_422(service, side):
    _a1111_error(_a1111(service, "txt2img", {"prompt": "a", "width": side, "height": 64}))


def test_a1111_init_images_over_the_pixel_limit_are_refused_before_decoding(service, bomb):
    encoded = base64.b64encode(bomb).decode()
    for size in ({"width": 64, "height": 64}, {}):
        error = _a1111_error(_a1111(service, "img2img", {"prompt": "a", "init_images": [encoded], **size}))
        assert "13000x13000" in str(error["detail"])


def test_png_info_refuses_a_decompression_bomb_and_bytes_that_are_no_image(service, bomb):
    error = _a1111_error(_a1111(service, "png-info", {"image": base64.b64encode(bomb).decode()}))
    assert "13000x13000" in str(error["detail"])
    for image in ("not base64!", base64.b64encode(b"GIF89a not an image").decode(), ""):
        _a1111_error(_a1111(service, "png-info", {"image": image}))


@pytest.mark.parametrize("value", [[1, 2], {"name": "x"}, ["a"], 3, None, True])
def test_a1111_model_names_that_are_not_strings_are_422_not_500(service, value):
    body = {"prompt": "a", "steps": 1, "width": 64, "height": 64, "override_settings": {"sd_model_checkpoint": value}}
    _a1111_error(_a1111(service, "txt2img", body))
    _a1111_error(_a1111(service, "options", {"sd_model_checkpoint": value}))


@pytest.mark.parametrize("body", [[1, 2], "text", 5])
def test_a1111_options_that_are_not_an_object_are_refused(service, body):
    response = _a1111(service, "options", body)
    assert 400 <= response.status_code < 500, response.text


@pytest.mark.parametrize(
    "cursor",
    [
        base64.urlsafe_b64encode(b"seq:" + b"9" * 30).decode(),
        base64.urlsafe_b64encode("seq:²".encode()).decode(),
        base64.urlsafe_b64encode("seq:١٢".encode()).decode(),
        base64.urlsafe_b64encode(b"seq:-1").decode(),
        "%%%",
        "x" * 5000,
    ],
)
def test_task_list_cursors_not_made_by_the_service_are_400(service, cursor):
    response = httpx.get(f"{service.url}/api/v1/tasks", params={"cursor": cursor}, headers=KEY)
    assert response.status_code == 400, response.text
    assert "cursor" in response.json()["detail"]


@pytest.mark.parametrize(
    "options",
    [
        {"original_inference_steps": 0},
        {"steps_offset": 2**63},
        {"solver_order": 10**12},
        {"solver_order": 0},
        {"prediction_type": 5},
        {"prediction_type": "noise"},
        {"timestep_spacing": ["linspace"]},
        {"use_karras_sigmas": "yes"},
        {"timestep_scaling": -1.0},
    ],
)
def test_scheduler_options_out_of_bounds_are_400_at_once(service, options):
    scheduler = "LCMScheduler" if {"original_inference_steps", "timestep_scaling"} & set(options) else None
    body = {"prompt": "a", "scheduler": scheduler or "DPMSolverMultistepScheduler", "scheduler_options": options}
    response = httpx.post(f"{service.url}/api/v1/generate", json=body, headers=KEY, timeout=30)
    assert response.status_code in (400, 422), response.text
    assert "scheduler_options" in response.text


def test_a_native_init_image_over_the_pixel_limit_is_400(service, bomb):
    body = {"prompt": "a", "init_image": data_url(Image.open(io.BytesIO(_png())), "PNG")}
    assert httpx.post(f"{service.url}/api/v1/generate", json=body, headers=KEY).status_code == 200
    bomb_url = "data:image/png;base64," + base64.b64encode(bomb).decode()
    response = httpx.post(f"{service.url}/api/v1/generate", json={"prompt": "a", "init_image": bomb_url}, headers=KEY)
    assert response.status_code == 400 and "13000x13000" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [({"prompt": ""}, "prompt"), ({"prompt": "a", "n": 11}, "n"), ({"prompt": "a", "n": "many"}, "n")],
)
def test_openai_framework_validation_names_the_field_and_the_reason(service, body, field):
    """Litestar's own detail is only "Validation failed for POST ..."; the answer carries the reason and field."""
    error = _openai_error(httpx.post(f"{service.url}/v1/images/generations", json=body, headers=BEARER))
    assert error["param"] == field
    assert str(error["message"]).startswith(f"{field}: ") and "Validation failed" not in str(error["message"])


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_json_nested_deeply_is_refused_in_each_dialects_shape(service, depth):
    nested = b"[" * depth + b"]" * depth
    openai = httpx.post(
        f"{service.url}/v1/images/generations",
        content=b'{"prompt": "a", "n": ' + nested + b"}",
        headers={**BEARER, "Content-Type": "application/json"},
    )
    assert 400 <= openai.status_code < 500, openai.text
    assert openai.json()["error"]["message"]
    a1111 = httpx.post(
        f"{service.url}/sdapi/v1/txt2img",
        content=b'{"prompt": "a", "styles": ' + nested + b"}",
        headers={**KEY, "Content-Type": "application/json"},
    )
    _a1111_error(a1111)
