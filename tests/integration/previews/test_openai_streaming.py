"""OpenAI's image streaming with the real `openai` SDK: `images.generate(stream=True, partial_images=2)` and
`images.edit(stream=True)` yield partial images (the live previews) and then the completed image, which equals the
image of the same request without `stream`."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from tests.support.services import API_KEY, REPO_ROOT, gradient_image

MODEL = REPO_ROOT / "models" / "scenes-sd"
# Enough steps on the trained model that the partial images come a good while apart on any machine.
STEPS = {"num_inference_steps": 30, "seed": 21}


@pytest.fixture(scope="module")
def service(make_service):
    return make_service("openai-stream", model_path=MODEL)


@pytest.fixture()
def client(service):
    return openai.OpenAI(base_url=f"{service.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def test_a_streamed_generation_yields_partial_images_then_the_image_of_the_plain_request(client):
    events = list(
        client.images.generate(
            prompt="a lake at sunset", size="256x256", stream=True, partial_images=2, extra_body=STEPS
        )
    )
    kinds = [event.type for event in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"], kinds
    assert [event.partial_image_index for event in events[:2]] == [0, 1]
    for partial in events[:2]:
        picture = Image.open(io.BytesIO(base64.b64decode(partial.b64_json)))
        assert picture.format == "PNG" and f"{picture.width}x{picture.height}" == partial.size
        assert partial.output_format == "png" and partial.created_at > 0
    completed = events[-1]
    assert completed.size == "256x256" and completed.usage is not None
    plain = client.images.generate(
        prompt="a lake at sunset", size="256x256", response_format="b64_json", extra_body=STEPS
    )
    assert np.array_equal(_pixels(completed.b64_json), _pixels(plain.data[0].b64_json))


def test_a_streamed_edit_yields_edit_events_and_the_plain_edits_image(client):
    image = io.BytesIO()
    gradient_image(256, 256).save(image, format="PNG")

    def edit(**extra):
        image.seek(0)
        return client.images.edit(
            image=("in.png", image, "image/png"),
            prompt="green mountains",
            extra_body={**STEPS, "strength": 0.8},
            **extra,
        )

    events = list(edit(stream=True, partial_images=1, output_format="jpeg"))
    kinds = [event.type for event in events]
    assert kinds == ["image_edit.partial_image", "image_edit.completed"], kinds
    assert Image.open(io.BytesIO(base64.b64decode(events[0].b64_json))).format == "JPEG"
    plain = edit(response_format="b64_json", output_format="jpeg")
    assert np.array_equal(_pixels(events[-1].b64_json), _pixels(plain.data[0].b64_json))
    without_partials = list(edit(stream=True))
    assert [event.type for event in without_partials] == ["image_edit.completed"]


def test_streaming_refusals_are_errors_before_any_event(client, service):
    with pytest.raises(openai.BadRequestError):
        client.images.generate(prompt="x", size="7x7", stream=True, partial_images=1)
    with pytest.raises(openai.BadRequestError):
        client.images.generate(prompt="x", partial_images=1)  # partial images without stream
    answer = httpx.post(
        f"{service.url}/v1/images/generations",
        json={"prompt": "x", "stream": True, "partial_images": 4},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert answer.status_code == 400 and answer.json()["error"]["type"] == "invalid_request_error"
