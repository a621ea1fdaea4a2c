"""An API node's event stream ends when a task a separate worker runs ends, however fast (issue 46, item 0).

With 1-step tasks an API node's `GET /api/v1/tasks/{id}/events`, opened right after the submit, stayed open for
ever: the task ended between the stream's read of it and the node's first look, which took the ended state as its
starting point and so saw no change. The read timeout here is shorter than the stream's keepalive period, so the
bounded re-read at each quiet period (the fallback for lost wake-ups) cannot pass this test on its own."""

from __future__ import annotations

import httpx
import pytest

from sdapi.service.tasks import EVENT_KEEPALIVE_SECONDS
from tests.support.services import ServiceProcess, WorkerProcess, submit, write_config

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
