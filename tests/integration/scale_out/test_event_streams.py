"""An API node's event stream ends when a task a separate worker runs ends, however fast (issue 46, item 0).

With 1-step tasks an API node's `GET /api/v1/tasks/{id}/events`, opened right after the submit, stayed open for
ever: the task ended between the stream's read of it and the node's first look, which took the ended state as its
starting point and so saw no change. The read timeout here is shorter than the stream's keepalive period, so the
bounded re-read at each quiet period (the fallback for lost wake-ups) cannot pass this test on its own."""

from __future__ import annotations

import base64
import io
import json

import httpx
import psycopg
import pytest
from PIL import Image

from sdapi.service.tasks import EVENT_KEEPALIVE_SECONDS
from tests.support.services import ServiceProcess, WorkerProcess, submit, write_config
from tests.support.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def _events(client: httpx.Client, task_id: str) -> list[str]:
    """The event names of the task's stream, read until `done` (a silent gap longer than the read timeout fails)."""
    names: list[str] = []
    timeout = httpx.Timeout(30.0, read=EVENT_KEEPALIVE_SECONDS - 3)
    with client.stream("GET", f"/api/v1/tasks/{task_id}/events", timeout=timeout) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event:"):
                names.append(line.split(":", 1)[1].strip())
                if names[-1] == "done":
                    break
    return names


def test_the_stream_of_a_fast_task_ends_on_an_api_node(tmp_path, tiny_model, postgres):
    store = {"backend": "postgres", "postgres": {"dsn": postgres.new_database()}}
    config = write_config(tmp_path, tiny_model, store=store)
    with ServiceProcess(config, role="api") as api, WorkerProcess(config):
        api.wait_ready()
        with api.client() as client:
            for n in range(4):
                task_id = submit(client, prompt=f"fast {n}", num_inference_steps=1, seed=n)
                names = _events(client, task_id)  # opened at once, as a new user would
                assert names[0] == "status" and names[-1] == "done", names
                assert client.get(f"/api/v1/tasks/{task_id}").json()["status"] == "completed"


def test_an_api_node_streams_the_previews_a_separate_worker_draws(tmp_path, tiny_model, postgres):
    """Issue 46: the worker posts its previews to the database's previews table, which the API node's watch reads
    with the task's state; the row is gone once the task has ended."""
    dsn = postgres.new_database()
    config = write_config(tmp_path, tiny_model, store={"backend": "postgres", "postgres": {"dsn": dsn}})
    with ServiceProcess(config, role="api") as api, WorkerProcess(config):
        api.wait_ready()
        with api.client() as client:
            task_id = submit(
                client,
                prompt="drawn elsewhere",
                num_inference_steps=150,
                num_images=4,
                width=512,
                height=384,
                preview_every_steps=10,
                seed=1,
            )
            previews = []
            timeout = httpx.Timeout(30.0, read=EVENT_KEEPALIVE_SECONDS - 3)
            with client.stream("GET", f"/api/v1/tasks/{task_id}/events", timeout=timeout) as response:
                event = None
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        event = line.removeprefix("event: ")
                    elif line.startswith("data: ") and event == "preview":
                        previews.append(json.loads(line.removeprefix("data: ")))
                    if event == "done":
                        break
            assert previews, "no preview reached the API node"
            for preview in previews:
                assert preview["step"] % 10 == 0 and preview["image"].startswith("data:image/jpeg;base64,")
                picture = Image.open(io.BytesIO(base64.b64decode(preview["image"].split(",", 1)[1])))
                assert picture.size == (preview["width"], preview["height"]) == (256, 192)
            assert client.get(f"/api/v1/tasks/{task_id}").json()["status"] == "completed"

        def previews_left() -> int:
            with psycopg.connect(dsn) as connection:
                return connection.execute("SELECT COUNT(*) FROM previews").fetchone()[0]

        eventually(lambda: previews_left() == 0, timeout=60, what="the ended task's preview row deleted")
