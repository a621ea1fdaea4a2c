"""Live previews on the native API, on the trained default model: the SSE stream's preview events, and the task
read with ?preview=1. A preview is the predicted final image of its step, so it looks more like the result as the
steps go on."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.support.services import REPO_ROOT, fetch_image, submit, task_events, wait_for_task
from tests.support.waiting import eventually

MODEL = REPO_ROOT / "models" / "scenes-sd"
TASK = {"prompt": "a lake and green mountains at noon", "width": 512, "height": 512, "num_inference_steps": 20}


@pytest.fixture(scope="module")
def trained(make_service):
    return make_service("previews", model_path=MODEL)


def decoded(data_url: str) -> Image.Image:
    header, encoded = data_url.split(",", 1)
    assert header == "data:image/jpeg;base64"
    picture = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert picture.format == "JPEG"
    return picture.convert("RGB")


def difference(preview: Image.Image, final: Image.Image) -> float:
    small = np.asarray(final.resize(preview.size, Image.Resampling.BILINEAR), dtype=np.float32)
    return float(np.abs(np.asarray(preview, dtype=np.float32) - small).mean())


def test_a_20_step_task_streams_previews_that_come_closer_to_the_final_image(trained):
    with trained.client() as client:
        task_id = submit(client, **TASK, seed=7)
        events = task_events(client, task_id, timeout=300)
        names = [name for name, _ in events]
        assert names[0] == "status" and names[-1] == "done", names
        previews = [data for name, data in events if name == "preview"]
        assert len(previews) >= 3, names
        steps = [preview["step"] for preview in previews]
        assert steps == sorted(set(steps)) and all(step % 5 == 0 for step in steps), steps
        final = fetch_image(events[-1][1]["result_url"]).convert("RGB")
        differences = []
        for preview in previews:
            # The run's own step count: the scheduler's (the default model's PNDM runs 21 for 20).
            assert preview["total_steps"] == events[-1][1]["progress"]["total_steps"]
            assert (preview["width"], preview["height"]) == (256, 256)
            picture = decoded(preview["image"])
            assert picture.size == (256, 256)
            differences.append(difference(picture, final))
        print("steps", steps, "mean differences to the final image", differences)
        assert differences[-1] < differences[0], differences


def test_the_task_read_carries_the_latest_preview_while_it_runs_and_none_after(trained):
    with trained.client() as client:
        task_id = submit(client, **{**TASK, "num_inference_steps": 60, "preview_every_steps": 2}, seed=3)

        seen: list[dict[str, Any]] = []

        def preview_shown() -> bool:
            body = client.get(f"/api/v1/tasks/{task_id}?preview=1").json()
            if body["status"] == "processing" and body.get("preview"):
                seen.append(body["preview"])
            return bool(seen)

        eventually(preview_shown, timeout=240, what="a preview while the task runs")
        shown = seen[0]
        assert shown["step"] % 2 == 0 and shown["total_steps"] >= 60
        assert decoded(shown["image"]).size == (shown["width"], shown["height"]) == (256, 256)
        assert client.get(f"/api/v1/tasks/{task_id}").json().get("preview") is None  # only when asked for
        done = wait_for_task(client, task_id, timeout=300)
        assert done["status"] == "completed" and done.get("preview") is None
        assert client.get(f"/api/v1/tasks/{task_id}?preview=1").json().get("preview") is None


def test_previews_off_for_a_request_sends_none(trained):
    with trained.client() as client:
        task_id = submit(client, **{**TASK, "width": 256, "height": 256, "preview_every_steps": 0}, seed=5)
        names = [name for name, _ in task_events(client, task_id, timeout=300)]
        assert "preview" not in names and names[-1] == "done", names
        assert client.post("/api/v1/generate", json={"prompt": "x", "preview_every_steps": -1}).status_code == 422
