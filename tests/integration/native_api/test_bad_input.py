"""Every field's bad values: 422 in the seed's loc/msg/type shape for schema violations, 400 with a detail
naming the field for input that parses but cannot be served. Never a 500, and nothing is queued."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from sdapi.core.schedulers import SCHEDULER_NAMES
from tests.support.services import data_url, gradient_image

VALID = {"prompt": "a cat"}


def _post(client, body):
    return client.post("/api/v1/generate", json=body)


@pytest.mark.parametrize(
    ("body", "loc", "error_type"),
    [
        ({}, ["body", "prompt"], "value_error.missing"),
        ({"negative_prompt": "x"}, ["body", "prompt"], "value_error.missing"),
        ({"prompt": None}, ["body", "prompt"], "type_error.str"),
        ({"prompt": 1}, ["body", "prompt"], "type_error.str"),
        ({"prompt": ""}, ["body", "prompt"], "value_error.any_str.min_length"),
        ({"prompt": "x" * 10_001}, ["body", "prompt"], "value_error.any_str.max_length"),
        ({**VALID, "negative_prompt": 5}, ["body", "negative_prompt"], "type_error.str"),
        ({**VALID, "negative_prompt": "x" * 10_001}, ["body", "negative_prompt"], "value_error.any_str.max_length"),
        ({**VALID, "init_image": 5}, ["body", "init_image"], "type_error.str"),
        ({**VALID, "width": "512"}, ["body", "width"], "type_error.int"),
        ({**VALID, "width": 512.5}, ["body", "width"], "type_error.int"),
        ({**VALID, "width": 0}, ["body", "width"], "value_error.number.not_ge"),
        ({**VALID, "height": -8}, ["body", "height"], "value_error.number.not_ge"),
        ({**VALID, "num_images": 0}, ["body", "num_images"], "value_error.number.not_ge"),
        ({**VALID, "num_images": 11}, ["body", "num_images"], "value_error.number.not_le"),
        ({**VALID, "num_images": "3"}, ["body", "num_images"], "type_error.int"),
        ({**VALID, "num_images": None}, ["body", "num_images"], "type_error.int"),
        ({**VALID, "num_inference_steps": 0}, ["body", "num_inference_steps"], "value_error.number.not_ge"),
        ({**VALID, "num_inference_steps": 2.5}, ["body", "num_inference_steps"], "type_error.int"),
        ({**VALID, "guidance_scale": -0.5}, ["body", "guidance_scale"], "value_error.number.not_ge"),
        ({**VALID, "guidance_scale": 30.5}, ["body", "guidance_scale"], "value_error.number.not_le"),
        ({**VALID, "guidance_scale": "7.5"}, ["body", "guidance_scale"], "type_error.float"),
        ({**VALID, "strength": -0.1}, ["body", "strength"], "value_error.number.not_ge"),
        ({**VALID, "strength": 1.01}, ["body", "strength"], "value_error.number.not_le"),
        ({**VALID, "strength": True}, ["body", "strength"], "type_error.float"),
        ({**VALID, "scheduler": 3}, ["body", "scheduler"], "type_error.str"),
        ({**VALID, "seed": -1}, ["body", "seed"], "value_error.number.not_ge"),
        ({**VALID, "seed": 2**32}, ["body", "seed"], "value_error.number.not_le"),
        ({**VALID, "seed": "42"}, ["body", "seed"], "type_error.int"),
        ({**VALID, "output_format": None}, ["body", "output_format"], "type_error.str"),
        ({**VALID, "output_format": 1}, ["body", "output_format"], "type_error.str"),
        ({**VALID, "callback_url": 1}, ["body", "callback_url"], "type_error.str"),
        ({**VALID, "num_image": 2}, ["body", "num_image"], "value_error.extra"),
    ],
)
def test_schema_violations_are_422_naming_the_field(client, body, loc, error_type):
    response = _post(client, body)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == loc
    assert error["type"] == error_type
    assert isinstance(error["msg"], str) and error["msg"]


@pytest.mark.parametrize("raw", [b"{bad", b"", b'{"prompt": "a cat"', b"\xff\xfe", b"null", b"[]", b'"a cat"'])
def test_malformed_json_or_non_object_is_422(client, raw):
    response = client.post("/api/v1/generate", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body"]
    assert error["type"] in ("value_error.jsondecode", "type_error.object")


def _assert_400(response, field, *fragments):
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    assert field in detail
    for fragment in fragments:
        assert fragment in detail, detail


def test_unknown_scheduler_is_400_listing_the_nine(client):
    response = _post(client, {**VALID, "scheduler": "DPM++ 2M Karras"})
    _assert_400(response, "scheduler", *SCHEDULER_NAMES)


@pytest.mark.parametrize("field", ["width", "height"])
@pytest.mark.parametrize("value", [100, 513, 8, 56, 2056, 4096])
def test_sides_off_the_multiple_of_8_grid_or_beyond_limits_are_400(client, field, value):
    response = _post(client, {**VALID, field: value})
    _assert_400(response, field, "8", "2048")


def test_steps_beyond_the_limit_are_400(client):
    _assert_400(_post(client, {**VALID, "num_inference_steps": 151}), "num_inference_steps", "150")


@pytest.mark.parametrize("value", ["gif", "bmp", "PNG ", ""])
def test_output_format_other_than_png_jpg_jpeg_webp_is_400(client, value):
    _assert_400(_post(client, {**VALID, "output_format": value}), "output_format", "png", "jpg", "jpeg", "webp")


def _png_bytes(width=64, height=64):
    buffer = io.BytesIO()
    gradient_image(width, height).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("init_image", "fragment"),
    [
        (base64.b64encode(_png_bytes()).decode(), "data:image"),  # no data URL prefix
        ("data:image/gif;base64," + base64.b64encode(_png_bytes()).decode(), "data:image"),
        ("data:text/plain;base64,aGVsbG8=", "data:image"),
        ("data:image/png;base64,%%%not-base64%%%", "base64"),
        ("data:image/png;base64,", "为空"),
        ("data:image/png;base64," + base64.b64encode(b"not an image at all").decode(), "PNG"),
        ("data:image/png;base64," + base64.b64encode(_png_bytes()[:60]).decode(), "PNG"),
    ],
)
def test_bad_init_images_are_400(client, init_image, fragment):
    _assert_400(_post(client, {**VALID, "init_image": init_image}), "init_image", fragment)


def test_gif_disguised_as_png_is_400(client):
    buffer = io.BytesIO()
    gradient_image(64, 64).save(buffer, format="GIF")
    body = {**VALID, "init_image": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}
    _assert_400(_post(client, body), "init_image", "PNG", "JPEG")


def test_init_image_over_the_pixel_limit_is_400_without_decoding_it(client):
    # 5000x4000 = 20 Mpx > the 16.7 Mpx default limit; a single-colour PNG keeps the upload small.
    buffer = io.BytesIO()
    Image.new("RGB", (5000, 4000)).save(buffer, format="PNG")
    body = {**VALID, "init_image": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}
    _assert_400(_post(client, body), "init_image", "5000x4000")


@pytest.mark.parametrize("size", [(40, 200), (3000, 64)])
def test_init_image_whose_output_would_be_out_of_range_is_400(client, size):
    _assert_400(_post(client, {**VALID, "init_image": data_url(gradient_image(*size))}), "init_image", "64")


def test_refused_requests_queue_nothing(client, service):
    before = client.get("/health").json()["queue_pending"]
    for body in [{}, {**VALID, "scheduler": "nope"}, {**VALID, "width": 7}]:
        assert _post(client, body).status_code in (400, 422)
    assert client.get("/health").json()["queue_pending"] == before


@pytest.mark.parametrize("depth", [100, 1000, 100_000])
def test_json_nested_deeply_is_422_and_queues_nothing(client, depth):
    """A body nested about 1,000 deep once answered 500 (the whole-float pass recursed in Python first)."""
    before = client.get("/health").json()["queue_pending"]
    raw = b'{"prompt": "x", "loras": ' + b"[" * depth + b"]" * depth + b"}"
    response = client.post("/api/v1/generate", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"][:2] in (["body"], ["body", "loras"])
    assert client.get("/health").json()["queue_pending"] == before


@pytest.mark.parametrize("prompt", ["[" * 100 + "a", "a (red:1.2.3) ball", "(a:" + "9" * 400 + ")"])
def test_prompts_a1111_syntax_cannot_read_are_400s_naming_the_prompt(client, prompt):
    """A1111's syntax (the native default): brackets nested past a bound, a weight that is no finite number."""
    response = client.post("/api/v1/generate", json={"prompt": prompt})
    assert response.status_code == 400 and response.json()["detail"].startswith("prompt 无法按 A1111 语法读取")
    plain = client.post("/api/v1/generate", json={"prompt": prompt, "prompt_syntax": "plain", "num_inference_steps": 1})
    assert plain.status_code == 200  # read as written, they are only text
