"""The task lifecycle over HTTP: cancel (pending and running), progress and timing, machine-readable failures."""

from __future__ import annotations

import json
import time

import pytest

from sdapi.testing.adapter_files import model_modules, write_adapter
from sdapi.testing.services import generate, in_process, submit, wait_for_task
from tests.receivers import CallbackReceiver

# Seconds on this machine: long enough to cancel mid-run and to queue a second task behind it.
# Euler: exactly one denoising step per inference step (PNDM, the tiny model's own, adds one).
LONG = {
    "prompt": "a long one",
    "width": 512,
    "height": 512,
    "num_inference_steps": 150,
    "seed": 3,
    "scheduler": "EulerDiscreteScheduler",
}


@pytest.fixture(scope="module")
def service(tmp_path_factory, tiny_model):
    with (
        CallbackReceiver() as receiver,
        in_process(
            tmp_path_factory.mktemp("lifecycle"),
            tiny_model,
            callbacks={"allowed_hosts": ["127.0.0.1/32"], "backoff_base": 0.1},
            limits={"max_inference_steps": 1000},
        ) as running,
    ):
        running.receiver = receiver
        yield running


def _until(client, task_id, condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/api/v1/tasks/{task_id}").json()
        if condition(body):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def test_a_running_task_stops_between_steps_and_says_it_was_cancelled(service):
    with service.client() as client:
        task_id = submit(client, **LONG, callback_url=service.receiver.url)
        running = _until(client, task_id, lambda body: (body["progress"] or {}).get("step", 0) >= 2)
        assert running["status"] == "processing" and running["started_at"] is not None
        answer = client.post(f"/api/v1/tasks/{task_id}/cancel")
        assert answer.status_code == 200 and answer.json()["task_id"] == task_id
        cancelled_at = time.monotonic()
        body = wait_for_task(client, task_id)
        stopped_after = time.monotonic() - cancelled_at
        assert body["status"] == "failed" and body["error_code"] == "cancelled"
        assert body["error_message"] == "任务已取消"
        assert body["result_url"] is None and body["result_urls"] is None
        assert body["progress"]["step"] < body["progress"]["total_steps"] == LONG["num_inference_steps"]
        assert body["finished_at"] is not None
        # Stopped mid-run: far sooner than the rest of the run would have taken.
        assert stopped_after < 10, stopped_after
        # Its callback fires like any failure's.
        [post] = [p for p in service.receiver.wait_for(1) if json.loads(p.body)["task_id"] == task_id]
        assert json.loads(post.body)["status"] == "failed"
        assert json.loads(post.body)["error_message"] == "任务已取消"
        # The worker goes on.
        assert generate(client, prompt="after the cancel")["status"] == "completed"


def test_a_pending_task_ends_at_once_and_delete_is_an_alias(service):
    with service.client() as client:
        blocker = submit(client, **LONG)
        queued = submit(client, prompt="never runs")
        answer = client.delete(f"/api/v1/tasks/{queued}")
        assert answer.status_code == 200
        body = answer.json()
        assert body["status"] == "failed" and body["error_code"] == "cancelled" and body["started_at"] is None
        assert client.get(f"/api/v1/tasks/{queued}").json() == body
        assert client.post(f"/api/v1/tasks/{blocker}/cancel").status_code == 200
        assert wait_for_task(client, blocker)["error_code"] == "cancelled"


def test_cancelling_a_finished_or_unknown_task_is_refused(service):
    with service.client() as client:
        done = generate(client, prompt="done")
        refused = client.post(f"/api/v1/tasks/{done['task_id']}/cancel")
        assert refused.status_code == 409
        assert refused.json() == {"detail": "任务已结束（completed），无法取消"}
        assert client.get(f"/api/v1/tasks/{done['task_id']}").json()["status"] == "completed"
        unknown = client.post("/api/v1/tasks/no-such-task/cancel")
        assert unknown.status_code == 404 and unknown.json() == {"detail": "任务不存在"}
        assert client.delete("/api/v1/tasks/no-such-task").status_code == 404


def test_progress_rises_while_running_and_ends_at_100(service):
    with service.client() as client:
        task_id = submit(client, **{**LONG, "num_inference_steps": 60}, num_images=2)
        seen = []
        while (body := client.get(f"/api/v1/tasks/{task_id}").json())["status"] in ("pending", "processing"):
            if body["progress"] is not None:
                seen.append(body["progress"]["step"])
            time.sleep(0.1)
        assert body["status"] == "completed"
        assert seen == sorted(seen) and len(set(seen)) >= 2, seen  # written while it ran, never backwards
        assert body["progress"] == {
            "step": 60,
            "total_steps": 60,
            "images_done": 2,
            "num_images": 2,
            "percent": 100.0,
        }
        assert body["created_at"] <= body["started_at"] <= body["finished_at"]


def test_a_request_that_fails_only_at_run_time_is_invalid_input(tmp_path, tiny_model):
    loras = tmp_path / "loras"
    loras.mkdir()
    write_adapter(loras / "fleeting.safetensors", model_modules(tiny_model), "lora", seed=1)
    with in_process(tmp_path / "svc", tiny_model, loras={"dir": str(loras)}) as running, running.client() as client:
        blocker = submit(client, **{**LONG, "num_inference_steps": 60})
        task_id = submit(client, prompt="styled", loras=[{"name": "fleeting", "weight": 0.5}])
        (loras / "fleeting.safetensors").unlink()  # gone before the worker gets to it
        body = wait_for_task(client, task_id)
        assert body["status"] == "failed" and body["error_code"] == "invalid_input", body
        assert "fleeting" in body["error_message"]
        assert wait_for_task(client, blocker)["status"] == "completed"
