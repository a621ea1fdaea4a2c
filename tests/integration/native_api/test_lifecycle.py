"""The task lifecycle over HTTP: cancel (pending and running), progress and timing, machine-readable failures."""

from __future__ import annotations

import hashlib
import io
import json
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from sdapi.media.provenance import read_user_comment
from tests.receivers import CallbackReceiver
from tests.support.adapter_files import model_modules, write_adapter
from tests.support.services import (
    data_url,
    fetch_pixels,
    generate,
    gradient_image,
    in_process,
    submit,
    task_events,
    wait_for_task,
)
from tests.support.waiting import eventually

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
            # float32 everywhere: `auto` picks bfloat16 on an AMX CPU, and the record below names the dtype.
            model={"dtype": "float32"},
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
        assert json.loads(post.body)["error_code"] == "cancelled"
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


# -- keys: isolation, quotas ------------------------------------------------------------------------------------

ALICE, BOB, ADMIN, LIMITED = "alice-key-0123456789", "bob-key-0123456789", "admin-key-0123456789", "limited-key-012345"


@pytest.fixture(scope="module")
def tenants(tmp_path_factory, tiny_model):
    keys = [
        {"key": ALICE, "name": "alice"},
        BOB,  # a plain string, as in the seed: named by a short hash
        {"key": ADMIN, "name": "ops", "admin": True},
        {"key": LIMITED, "name": "limited", "max_pending": 1, "requests_per_minute": 3},
    ]
    with in_process(tmp_path_factory.mktemp("tenants"), tiny_model, api={"keys": keys}) as running:
        yield running


def test_a_key_sees_only_its_own_tasks_and_an_admin_sees_all(tenants):
    with tenants.client(ALICE) as alice, tenants.client(BOB) as bob, tenants.client(ADMIN) as admin:
        mine = generate(alice, prompt="alice's")
        assert mine["owner"] == "alice"
        for path in (f"/api/v1/tasks/{mine['task_id']}", f"/api/v1/tasks/{mine['task_id']}/cancel"):
            hidden = bob.get(path) if path.endswith(mine["task_id"]) else bob.post(path)
            assert hidden.status_code == 404 and hidden.json() == {"detail": "任务不存在"}
        assert bob.delete(f"/api/v1/tasks/{mine['task_id']}").status_code == 404
        assert (
            admin.get(f"/api/v1/tasks/{mine['task_id']}").json() == alice.get(f"/api/v1/tasks/{mine['task_id']}").json()
        )
        bobs = generate(bob, prompt="bob's")
        assert bobs["owner"].startswith("key-") and BOB not in bobs["owner"]
        listed_by_bob = [task["task_id"] for task in bob.get("/api/v1/tasks").json()["tasks"]]
        assert bobs["task_id"] in listed_by_bob and mine["task_id"] not in listed_by_bob
        listed_by_admin = [task["task_id"] for task in admin.get("/api/v1/tasks?limit=100").json()["tasks"]]
        assert {mine["task_id"], bobs["task_id"]} <= set(listed_by_admin)


def test_a_keys_pending_limit_and_rate_answer_429_naming_the_limit(tenants):
    with tenants.client(LIMITED) as limited, tenants.client(ALICE) as alice:
        blocker = submit(alice, **LONG)  # keeps the worker busy, so the limited key's first task stays pending
        first = submit(limited, prompt="one")
        second = limited.post("/api/v1/generate", json={"prompt": "two"})
        assert second.status_code == 429 and "max_pending" in second.json()["detail"]
        assert second.headers["Retry-After"].isdigit()
        third = limited.post("/api/v1/generate", json={"prompt": "three"})  # the third request this minute
        assert third.status_code == 429 and "max_pending" in third.json()["detail"]
        fourth = limited.post("/api/v1/generate", json={"prompt": "four"})
        assert fourth.status_code == 429 and "requests_per_minute" in fourth.json()["detail"]
        assert 1 <= int(fourth.headers["Retry-After"]) <= 60
        assert alice.post("/api/v1/generate", json={"prompt": "others are not limited"}).status_code == 200
        assert alice.post(f"/api/v1/tasks/{blocker}/cancel").status_code == 200
        assert wait_for_task(limited, first)["status"] == "completed"


# -- listing, queue position -------------------------------------------------------------------------------------


def test_listing_pages_newest_first_and_stays_stable_under_inserts(service):
    with service.client() as client:
        ids = [submit(client, prompt=f"listed {n}", num_inference_steps=1, width=64, height=64) for n in range(5)]
        first = client.get("/api/v1/tasks?limit=2").json()
        assert [task["task_id"] for task in first["tasks"]] == [ids[4], ids[3]]
        submit(client, prompt="inserted between pages", num_inference_steps=1, width=64, height=64)
        second = client.get(f"/api/v1/tasks?limit=2&cursor={first['next_cursor']}").json()
        assert [task["task_id"] for task in second["tasks"]] == [ids[2], ids[1]]
        for task_id in ids:
            wait_for_task(client, task_id)
        completed = client.get("/api/v1/tasks?status=completed&limit=100").json()["tasks"]
        assert {task["status"] for task in completed} == {"completed"} and set(ids) <= {t["task_id"] for t in completed}
        for bad in ("limit=0", "limit=101", "cursor=not-a-cursor", "status=unknown"):
            answer = client.get(f"/api/v1/tasks?{bad}")
            assert answer.status_code in (400, 422) and "detail" in answer.json(), bad


def test_queue_positions_fall_as_the_queue_drains_and_estimates_appear_after_a_measured_run(service):
    with service.client() as client:
        generate(client, prompt="measured first", num_inference_steps=20)  # gives the estimator a speed
        running = submit(client, **{**LONG, "num_inference_steps": 40})
        queued = [submit(client, prompt=f"queued {n}", num_inference_steps=20) for n in range(3)]
        _until(client, running, lambda body: body["status"] == "processing")
        bodies = [client.get(f"/api/v1/tasks/{task_id}").json() for task_id in queued]
        assert [body["queue_position"] for body in bodies] == [0, 1, 2]
        starts = [body["estimated_start_at"] for body in bodies]
        assert all(starts) and starts == sorted(starts), starts
        assert client.get(f"/api/v1/tasks/{running}").json()["queue_position"] is None
        positions = []
        while (body := client.get(f"/api/v1/tasks/{queued[2]}").json())["status"] == "pending":
            positions.append(body["queue_position"])
            time.sleep(0.05)
        assert positions == sorted(positions, reverse=True) and positions[0] == 2 and positions[-1] <= 1
        assert body["queue_position"] is None and body["estimated_start_at"] is None


# -- idempotent submits ------------------------------------------------------------------------------------------


def test_an_idempotent_retry_returns_the_original_task_and_a_different_body_is_refused(tenants):
    body = {"prompt": "exactly once", "seed": 5, "num_inference_steps": 2}
    with tenants.client(ALICE) as alice, tenants.client(ADMIN) as admin:
        headers = {"Idempotency-Key": "order-1234"}
        first = alice.post("/api/v1/generate", json=body, headers=headers)
        retry = alice.post("/api/v1/generate", json=dict(reversed(body.items())), headers=headers)  # same request
        assert first.status_code == retry.status_code == 200
        assert retry.json()["task_id"] == first.json()["task_id"]
        changed = alice.post("/api/v1/generate", json={**body, "seed": 6}, headers=headers)
        assert changed.status_code == 409 and "Idempotency-Key" in changed.json()["detail"]
        # Keys are scoped per API key: the same header from another key is another request.
        other = admin.post("/api/v1/generate", json=body, headers=headers)
        assert other.status_code == 200 and other.json()["task_id"] != first.json()["task_id"]
        listed = [t["task_id"] for t in alice.get("/api/v1/tasks?limit=100").json()["tasks"]]
        assert listed.count(first.json()["task_id"]) == 1
        assert wait_for_task(alice, first.json()["task_id"])["status"] == "completed"
        assert alice.post("/api/v1/generate", json=body, headers={"Idempotency-Key": ""}).status_code == 400


# -- waiting: long-poll and events -------------------------------------------------------------------------------


def test_wait_returns_as_soon_as_the_task_ends_or_when_the_time_is_up(service):
    with service.client() as client:
        task_id = submit(client, prompt="waited for", num_inference_steps=30)
        started = time.monotonic()
        body = client.get(f"/api/v1/tasks/{task_id}?wait=30").json()
        assert body["status"] == "completed" and time.monotonic() - started < 25
        long_task = submit(client, **LONG)
        started = time.monotonic()
        body = client.get(f"/api/v1/tasks/{long_task}?wait=0.5").json()
        assert body["status"] in ("pending", "processing") and 0.4 < time.monotonic() - started < 5
        assert client.get(f"/api/v1/tasks/{long_task}?wait=61").status_code == 400
        assert client.post(f"/api/v1/tasks/{long_task}/cancel").status_code == 200
        assert client.get(f"/api/v1/tasks/{long_task}?wait=30").json()["error_code"] == "cancelled"


def test_the_event_stream_reports_status_and_progress_then_ends(service):
    with service.client() as client:
        task_id = submit(client, **{**LONG, "num_inference_steps": 60})
        events = task_events(client, task_id)
        names = [name for name, _ in events]
        assert names[0] == "status" and names[-1] == "done" and "progress" in names, names
        steps = [data["step"] for name, data in events if name == "progress"]
        assert steps == sorted(steps)
        final = events[-1][1]
        assert final["task_id"] == task_id and final["status"] == "completed"
        assert client.get(f"/api/v1/tasks/{task_id}/events").status_code == 200  # an ended task: status, done
        assert client.get("/api/v1/tasks/no-such-task/events").status_code == 404


# -- rerun -----------------------------------------------------------------------------------------------------


def test_a_rerun_makes_the_same_pixels_under_a_new_task(service):
    with service.client() as client:
        original = generate(client, prompt="once more", num_images=2, num_inference_steps=6)
        answer = client.post(f"/api/v1/tasks/{original['task_id']}/rerun")
        assert answer.status_code == 200 and answer.json()["task_id"] != original["task_id"]
        again = wait_for_task(client, answer.json()["task_id"])
        assert again["status"] == "completed" and again["seed"] == original["seed"]
        for before, after in zip(original["result_urls"], again["result_urls"], strict=True):
            assert before != after
            assert np.array_equal(fetch_pixels(before), fetch_pixels(after))
        assert client.post("/api/v1/tasks/no-such-task/rerun").status_code == 404


def test_an_ended_image_to_image_task_cannot_rerun(service):
    with service.client() as client:
        done = generate(client, prompt="from a picture", init_image=data_url(gradient_image(64, 64)), strength=0.5)
        refused = client.post(f"/api/v1/tasks/{done['task_id']}/rerun")
        assert refused.status_code == 400 and "init_image" in refused.json()["detail"]


# -- delivery log, redelivery -----------------------------------------------------------------------------------


def test_the_delivery_log_shows_each_attempt_and_a_redelivery_sends_again_under_a_new_id(tmp_path, tiny_model):
    with (
        CallbackReceiver(script=[(500, 0.0), (500, 0.0), (200, 0.0)]) as receiver,
        in_process(
            tmp_path, tiny_model, callbacks={"allowed_hosts": ["127.0.0.1/32"], "backoff_base": 0.05}
        ) as running,
        running.client() as client,
    ):
        task_id = submit(client, prompt="logged", callback_url=receiver.url)
        assert client.get(f"/api/v1/tasks/{task_id}/callback").status_code == 404  # not ended yet: no callback
        wait_for_task(client, task_id)
        _until(client, task_id, lambda body: body["callback_status"] == "delivered")
        log = client.get(f"/api/v1/tasks/{task_id}/callback").json()
        assert log["status"] == "delivered" and log["url"] == receiver.url
        assert [attempt["http_status"] for attempt in log["attempts"]] == [500, 500, 200]
        assert [attempt["error"] for attempt in log["attempts"]] == ["HTTP 500", "HTTP 500", None]
        assert all(
            attempt["duration_ms"] >= 0 and attempt["webhook_id"] == log["webhook_id"] for attempt in log["attempts"]
        )
        again = client.post(f"/api/v1/tasks/{task_id}/callback/redeliver")
        assert again.status_code == 200 and again.json()["webhook_id"] != log["webhook_id"]
        posts = receiver.wait_for(4)
        assert posts[3].headers["webhook-id"] == again.json()["webhook_id"]
        assert json.loads(posts[3].body) == json.loads(posts[2].body)  # the same final event
        _until(client, task_id, lambda body: body["callback_status"] == "delivered")
        final = client.get(f"/api/v1/tasks/{task_id}/callback").json()
        assert len(final["attempts"]) == 4 and final["attempts"][-1]["webhook_id"] == again.json()["webhook_id"]
        plain = generate(client, prompt="no callback")
        missing = client.get(f"/api/v1/tasks/{plain['task_id']}/callback")
        assert missing.status_code == 404 and "callback_url" in missing.json()["detail"]
        assert client.post(f"/api/v1/tasks/{plain['task_id']}/callback/redeliver").status_code == 404


# -- provenance -------------------------------------------------------------------------------------------------


def test_images_carry_their_parameters_for_png_info_tools_and_the_task_lists_them(service):
    with service.client() as client:
        body = generate(
            client,
            prompt="a lighthouse",
            negative_prompt="fog",
            seed=41,
            num_images=2,
            num_inference_steps=5,
            guidance_scale=6.5,
            scheduler="EulerAncestralDiscreteScheduler",
        )
        assert body["status"] == "completed"
        for index, (entry, url) in enumerate(zip(body["images"], body["result_urls"], strict=True)):
            raw = httpx.get(url).content
            assert entry["url"] == url and entry["seed"] == 41 + index
            assert entry["bytes"] == len(raw) and entry["sha256"] == hashlib.sha256(raw).hexdigest()
            image = Image.open(io.BytesIO(raw))
            assert (entry["width"], entry["height"]) == image.size == (128, 96)
            parameters = image.text["parameters"]
            assert parameters.splitlines()[0] == "a lighthouse"
            assert parameters.splitlines()[1] == "Negative prompt: fog"
            assert (
                "Steps: 5, Sampler: Euler a, Schedule type: Automatic, "
                f"CFG scale: 6.5, Seed: {41 + index}, Size: 128x96" in parameters
            )
            record = json.loads(image.text["sdapi"])
            assert record["seed"] == 41 + index and record["task_id"] == body["task_id"]
            assert record["engine"] == "torch" and record["dtype"] == "float32" and record["model"]["sha256"]
        jpeg = generate(client, prompt="a jpeg", seed=9, output_format="jpg", num_inference_steps=3)
        image = Image.open(io.BytesIO(httpx.get(jpeg["result_url"]).content))
        comment = read_user_comment(image)
        assert comment is not None and comment.startswith("a jpeg\nSteps: 3") and "Seed: 9" in comment
        assert json.loads(comment.splitlines()[-1])["seed"] == 9


def test_embedding_parameters_can_be_turned_off(tmp_path, tiny_model):
    with in_process(tmp_path, tiny_model, output={"embed_parameters": False}) as running, running.client() as client:
        body = generate(client, prompt="a secret prompt", num_inference_steps=2)
        raw = httpx.get(body["result_url"]).content
        assert b"a secret prompt" not in raw and "parameters" not in Image.open(io.BytesIO(raw)).text
        assert body["images"][0]["sha256"] == hashlib.sha256(raw).hexdigest()


# -- retention ---------------------------------------------------------------------------------------------------


def test_finished_tasks_and_their_images_go_after_the_retention_period(tmp_path, tiny_model):
    two_seconds = 2 / 86400
    with in_process(tmp_path, tiny_model, retention={"days": two_seconds}) as running, running.client() as client:
        done = generate(client, prompt="short-lived", num_images=2, num_inference_steps=2)
        image = done["result_urls"][0]
        assert httpx.get(image).status_code == 200
        task_url = f"/api/v1/tasks/{done['task_id']}"
        eventually(lambda: client.get(task_url).status_code == 404, what="the retention sweep")
        assert client.get(task_url).status_code == 404
        assert httpx.get(image).status_code == 404
        assert not list((tmp_path / "data" / "images").glob("*.png"))
