"""The OpenAI Images API (/v1) with the real `openai` Python client, unchanged, against the real service."""

from __future__ import annotations

import base64
import io
import time

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from sdapi.config import load_config
from sdapi.media.provenance import read_embedded
from sdapi.storage.local import LocalImageStorage
from tests.support.adapter_files import model_modules, write_adapter
from tests.support.services import API_KEY, InProcessService, gradient_image, write_config

FAST = {"num_inference_steps": 3}


@pytest.fixture(scope="module")
def service(make_service, tmp_path_factory, tiny_model):
    loras = tmp_path_factory.mktemp("openai-loras")
    write_adapter(loras / "ink_style.safetensors", model_modules(tiny_model), "lora", seed=3, scale=1.0)
    return make_service("openai", queue={"max_pending": 2}, loras={"dir": str(loras)})


@pytest.fixture()
def client(service):
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def _pixels(raw: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


def test_generate_with_urls_and_b64_and_sdapi_controls_through_extra_body(client, service):
    by_url = client.images.generate(prompt="a red boat", n=2, size="128x64", extra_body={**FAST, "seed": 11})
    assert len(by_url.data) == 2 and by_url.created > 0
    first = httpx.get(by_url.data[0].url).content
    assert Image.open(io.BytesIO(first)).size == (128, 64)
    inline = client.images.generate(
        prompt="a red boat", n=2, size="128x64", response_format="b64_json", extra_body={**FAST, "seed": 11}
    )
    assert inline.data[0].url is None
    # The same seed gives the same pixels; image 1 uses seed + 1.
    assert np.array_equal(_pixels(base64.b64decode(inline.data[0].b64_json)), _pixels(first))
    second = httpx.get(by_url.data[1].url).content
    assert not np.array_equal(_pixels(second), _pixels(first))
    jpeg = client.images.generate(prompt="x", output_format="jpeg", extra_body=FAST)
    assert Image.open(io.BytesIO(httpx.get(jpeg.data[0].url).content)).format == "JPEG"
    webp = client.images.generate(
        prompt="a red boat", output_format="webp", output_compression=60, response_format="b64_json", extra_body=FAST
    )
    assert webp.output_format == "webp"
    raw = base64.b64decode(webp.data[0].b64_json)
    assert Image.open(io.BytesIO(raw)).format == "WEBP"
    infotext, _record = read_embedded(raw)
    assert infotext is not None and infotext.startswith("a red boat\n")
    # Every dialect request is an ordinary task of the caller.
    with service.client() as native:
        listed = native.get("/api/v1/tasks?limit=100").json()["tasks"]
    assert sum(task["seed"] == 11 for task in listed) >= 2


def test_a_lora_through_extra_body(client):
    def pixels(**extra):
        made = client.images.generate(
            prompt="a red boat", response_format="b64_json", extra_body={**FAST, "seed": 4, **extra}
        )
        return _pixels(base64.b64decode(made.data[0].b64_json))

    plain, styled = pixels(), pixels(loras=[{"name": "ink_style", "weight": 1.0}])
    assert np.abs(plain.astype(float) - styled.astype(float)).mean() > 1.0
    assert np.array_equal(styled, pixels(loras=[{"name": "ink_style", "weight": 1.0}]))
    with pytest.raises(openai.BadRequestError, match="LoRA 不存在"):
        pixels(loras=[{"name": "missing"}])


def test_models_and_an_unknown_model(client):
    assert [model.id for model in client.models.list().data] == ["sdapi"]
    with pytest.raises(openai.NotFoundError, match="sdapi") as unknown:
        client.images.generate(prompt="x", model="dall-e-3", extra_body=FAST)
    # As OpenAI answers it: 404, code model_not_found, the field named, the served models in the message.
    error = unknown.value.body
    assert (error["code"], error["param"], error["type"]) == ("model_not_found", "model", "not_found_error")
    assert "dall-e-3" in error["message"] and "可用模型：sdapi" in error["message"]


def test_edit_runs_image_to_image_and_a_mask_without_alpha_is_refused(client):
    buffer = io.BytesIO()
    gradient_image(96, 64).save(buffer, format="PNG")
    edited = client.images.edit(
        image=("in.png", buffer.getvalue(), "image/png"), prompt="paint it", extra_body={**FAST, "strength": 0.6}
    )
    assert Image.open(io.BytesIO(httpx.get(edited.data[0].url).content)).size == (96, 64)
    with pytest.raises(openai.BadRequestError, match="guidance_scale"):  # a form field that is not a number
        client.images.edit(
            image=("in.png", buffer.getvalue(), "image/png"), prompt="x", extra_body={"guidance_scale": "lots"}
        )
    with pytest.raises(openai.BadRequestError, match="alpha"):
        client.images.edit(
            image=("in.png", buffer.getvalue(), "image/png"), mask=("m.png", buffer.getvalue(), "image/png"), prompt="x"
        )


def _png(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_edit_with_a_mask_repaints_only_its_transparent_pixels(client):
    picture = gradient_image(96, 64)
    mask = Image.new("RGBA", (96, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (24, 16, 72, 48))  # the transparent hole is what is edited
    edited = client.images.edit(
        image=("in.png", _png(picture), "image/png"),
        mask=("mask.png", _png(mask), "image/png"),
        prompt="a window",
        extra_body={**FAST, "mask_blur": 0},
    )
    out = np.asarray(Image.open(io.BytesIO(httpx.get(edited.data[0].url).content)).convert("RGB"), dtype=float)
    original = np.asarray(picture, dtype=float)
    hole = np.zeros((64, 96), bool)
    hole[16:48, 24:72] = True
    assert np.array_equal(out[~hole], original[~hole])
    assert np.abs(out[hole] - original[hole]).mean() > 5.0
    with pytest.raises(openai.BadRequestError, match="mask") as refused:
        client.images.edit(
            image=("in.png", _png(picture), "image/png"),
            mask=("mask.png", _png(mask.resize((48, 32))), "image/png"),
            prompt="x",
        )
    assert refused.value.body["param"] == "mask" and "48x32" in refused.value.body["message"]


def test_errors_raise_the_sdk_exception_classes_with_the_message(client, service):
    with pytest.raises(openai.BadRequestError, match="size"):
        client.images.generate(prompt="x", size="huge")
    with pytest.raises(openai.BadRequestError, match="width"):
        client.images.generate(prompt="x", size="100x100", extra_body=FAST)  # not a multiple of 8
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{service.url}/v1", api_key="wrong", max_retries=0).images.generate(prompt="x")
    with service.client() as native:  # fill the queue (max_pending 2) behind a long task
        blockers = [
            native.post(
                "/api/v1/generate", json={"prompt": "b", "width": 512, "height": 512, "num_inference_steps": 150}
            )
            for _ in range(3)
        ]
        with pytest.raises(openai.RateLimitError, match="队列已满"):
            client.images.generate(prompt="x", extra_body=FAST)
        for blocker in blockers:
            if blocker.status_code == 200:
                native.post(f"/api/v1/tasks/{blocker.json()['task_id']}/cancel")


def test_a_client_that_gives_up_waiting_cancels_its_task(service):
    impatient = openai.OpenAI(base_url=f"{service.url}/v1", api_key=API_KEY, max_retries=0, timeout=1.5)
    with pytest.raises(openai.APITimeoutError):
        impatient.images.generate(
            prompt="too slow", size="512x512", extra_body={"num_inference_steps": 150, "seed": 77}
        )
    with service.client() as native:
        deadline = time.monotonic() + 30
        while True:
            [task] = [t for t in native.get("/api/v1/tasks?limit=100").json()["tasks"] if t["seed"] == 77]
            if task["status"] == "failed":
                break
            assert time.monotonic() < deadline, task
            time.sleep(0.1)
    assert task["error_code"] == "cancelled"


def test_an_unexpected_fault_answers_in_openais_error_shape(tmp_path, tiny_model):
    """Not a request error and not one of sdapi's: logged with its traceback, answered as OpenAI answers a 500."""

    class UnreadableStorage(LocalImageStorage):
        def read(self, key: str) -> bytes:
            raise RuntimeError("the disk went away")

    config = load_config(write_config(tmp_path, tiny_model))
    with InProcessService(config, storage=UnreadableStorage(config.images_path)) as service:
        service.wait_ready()
        response = httpx.post(
            f"{service.url}/v1/images/generations",
            json={"prompt": "a lighthouse", "size": "64x64", "response_format": "b64_json"},
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=120,
        )
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["message"] == "服务器内部错误" and error["type"] == "server_error"
    assert "disk" not in response.text  # the traceback goes to the log, never to the client
