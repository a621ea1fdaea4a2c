"""Request size: what the image limits allow is served, a body over limits.max_request_bytes gets a 413 the client
can read (never a connection reset), and the schema says which request properties exist."""

from __future__ import annotations

import base64
import io
import json
import socket
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.services import API_KEY, fetch_image, submit, wait_for_task

SMALL_LIMIT = 1_000_000


def _photo_png(side: int, seed: int = 0) -> bytes:
    """A noisy picture that PNG cannot compress: the size of a real photograph's PNG, or larger."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 200, side, dtype=np.float32)[None, :, None] + np.zeros((side, side, 3), np.float32)
    pixels = np.clip(base + rng.normal(0, 40, (side, side, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


@pytest.fixture(scope="module")
def small_limit_service(make_service):
    return make_service("limits", limits={"max_request_bytes": SMALL_LIMIT})


def test_a_2048_square_photographic_init_image_is_served_under_the_default_limit(client):
    png = _photo_png(2048)
    body = json.dumps({"prompt": "keep it", "init_image": _data_url(png), "strength": 0.0}).encode()
    assert len(body) > 10_000_000  # over the framework's old 10 MB default, which reset the connection
    response = client.post("/api/v1/generate", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    done = wait_for_task(client, response.json()["task_id"], timeout=300)
    assert done["status"] == "completed", done
    assert fetch_image(done["result_url"]).size == (2048, 2048)


def test_the_default_limit_refuses_what_no_allowed_image_needs_with_a_413(client, service):
    limit = service.config.limits.request_limit_bytes
    oversized = b'{"prompt": "' + b"x" * (limit + 1) + b'"}'
    response = client.post("/api/v1/generate", content=oversized, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert str(limit) in response.json()["detail"] and "limits.max_request_bytes" in response.json()["detail"]


@pytest.mark.parametrize("chunked", [False, True])
def test_both_sides_of_a_configured_limit(small_limit_service, chunked):
    under = json.dumps({"prompt": "under", "init_image": _data_url(_photo_png(400)), "strength": 0.0}).encode()
    over = json.dumps({"prompt": "over", "init_image": _data_url(_photo_png(600)), "strength": 0.0}).encode()
    assert len(under) < SMALL_LIMIT < len(over)

    def send(client: httpx.Client, body: bytes) -> httpx.Response:
        # A generator body goes out chunked, with no Content-Length to refuse it by.
        content = (body[start : start + 65536] for start in range(0, len(body), 65536)) if chunked else body
        return client.post("/api/v1/generate", content=content, headers={"Content-Type": "application/json"})

    with small_limit_service.client() as client:
        accepted = send(client, under)
        assert accepted.status_code == 200, accepted.text
        refused = send(client, over)
        assert refused.status_code == 413
        assert str(SMALL_LIMIT) in refused.json()["detail"]
        # The same connection still works: the refused body was read to its end, not cut off.
        assert wait_for_task(client, accepted.json()["task_id"])["status"] == "completed"
        assert client.get("/health").status_code == 200


def test_the_schema_says_request_bodies_allow_no_other_properties(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["GenerationRequest"]["additionalProperties"] is False
    assert schemas["LoraRequest"]["additionalProperties"] is False
    # What the schema says is what the service enforces.
    response = client.post("/api/v1/generate", json={"prompt": "x", "not_a_field": 1})
    assert response.status_code == 422
    assert submit(client, prompt="x")


def test_a_client_that_leaves_mid_body_is_logged_at_info_not_as_an_error(small_limit_service, caplog):
    """Nothing went wrong on the server: the line says so at INFO, and the service goes on serving."""
    url = httpx.URL(small_limit_service.url)
    with caplog.at_level("INFO"):
        with socket.create_connection((url.host, url.port), timeout=30) as connection:
            connection.sendall(
                b"POST /api/v1/generate HTTP/1.1\r\nHost: x\r\nX-API-Key: " + API_KEY.encode() + b"\r\n"
                b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n" + b'{"prompt": "half a bo'
            )
        deadline = time.monotonic() + 30
        while not any("disconnected before its body arrived" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            time.sleep(0.05)
        with small_limit_service.client() as client:
            assert client.get("/health").status_code == 200
    about = [r for r in caplog.records if "/api/v1/generate" in r.getMessage()]
    assert about and all(record.levelname == "INFO" for record in about), [(r.levelname, r.getMessage()) for r in about]
