"""Cross-request batching over HTTP (queue.batch_max > 1) on the tiny model: compatible tasks run as one denoising
batch, and each keeps what a task of its own has: its pixels (the seed rule), its progress, its cancel, its lease
and its one callback."""

from __future__ import annotations

import json
import sqlite3
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.receivers import CallbackReceiver
from tests.support.services import fetch_pixels, generate, in_process, mean_abs_diff, submit, wait_for_task

# A batch starts once full (four images) or after the wait: every test here fills its batch within milliseconds, so
# the wait only keeps a busy machine's slow submits from splitting one (a task alone waits it out: the lease test's
# second run).
BATCHED = {"batch_max": 4, "batch_wait_ms": 3_000}
SMALL = {"width": 128, "height": 96, "num_inference_steps": 8, "scheduler": "EulerAncestralDiscreteScheduler"}
# Seconds of batch on this machine: long enough to act on a member while it runs.
LONG = {"width": 256, "height": 256, "num_inference_steps": 150, "scheduler": "EulerDiscreteScheduler"}


@pytest.fixture(scope="module")
def receiver():
    with CallbackReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def batched(tmp_path_factory, tiny_model, receiver):
    with in_process(
        tmp_path_factory.mktemp("batched"),
        tiny_model,
        queue=BATCHED,
        callbacks={"allowed_hosts": ["127.0.0.1/32"], "backoff_base": 0.1},
    ) as running:
        yield running


@pytest.fixture(scope="module")
def alone(tmp_path_factory, tiny_model):
    """The same model without batching: what each task makes on its own."""
    with in_process(tmp_path_factory.mktemp("alone"), tiny_model) as running:
        yield running


def _batches_of(service, tasks: int) -> float:
    """How many batches of exactly `tasks` tasks this process has run (sdapi_batch_tasks)."""
    text = httpx.get(f"{service.url}/metrics").text
    [family] = [f for f in text_string_to_metric_families(text) if f.name == "sdapi_batch_tasks"]
    buckets = {float(s.labels["le"]): s.value for s in family.samples if s.name.endswith("_bucket")}
    return buckets[float(tasks)] - buckets[float(tasks - 1)]


def _callbacks(receiver: CallbackReceiver, task_id: str) -> list[dict[str, object]]:
    return [
        json.loads(post.body) | {"webhook-id": post.headers["webhook-id"]}
        for post in receiver.received
        if json.loads(post.body)["task_id"] == task_id
    ]


def _stored_images(service) -> set[str]:
    """The names of the images in the service's local storage."""
    return {path.name for path in service.config.data_path.rglob("*.png")}


def _urls(body) -> list[str]:
    """A task's image URLs: result_urls for several images, result_url for one (the contract's rule)."""
    return body["result_urls"] or [body["result_url"]]


def _until_all(client, task_ids, condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while True:
        bodies = [client.get(f"/api/v1/tasks/{task_id}").json() for task_id in task_ids]
        if all(condition(body) for body in bodies):
            return bodies
        assert time.monotonic() < deadline, bodies
        time.sleep(0.05)


def _until_callbacks(receiver, task_ids, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not all(_callbacks(receiver, task_id) for task_id in task_ids):
        assert time.monotonic() < deadline, "callbacks missing"
        time.sleep(0.05)


def test_compatible_tasks_run_as_one_batch_and_each_keeps_its_seed_rule(batched, alone, receiver):
    requests = [
        {"prompt": "a red ball", "seed": 11},
        {"prompt": "snowy mountains", "negative_prompt": "blurry", "seed": 40, "num_images": 2},
        {"prompt": "a lake at night", "seed": 5},
    ]
    with batched.client() as client, alone.client() as reference:
        before = _batches_of(batched, 3)
        ids = [submit(client, **SMALL, **request, callback_url=receiver.url) for request in requests]
        bodies = [wait_for_task(client, task_id) for task_id in ids]
        assert [body["status"] for body in bodies] == ["completed"] * 3, bodies
        assert _batches_of(batched, 3) == before + 1  # one batch of the three tasks
        for request, body in zip(requests, bodies, strict=True):
            images = request.get("num_images", 1)
            assert body["attempts"] == 1 and len(_urls(body)) == images
            assert body["progress"]["percent"] == 100.0 and body["progress"]["images_done"] == images
            # Each task's images are those it makes alone: its prompts, image k from its seed + k.
            own = generate(reference, **SMALL, **request)
            for mine, its_own in zip(_urls(body), _urls(own), strict=True):
                assert mean_abs_diff(fetch_pixels(mine), fetch_pixels(its_own)) <= 1.0
        second_of_two = generate(reference, **SMALL, prompt="snowy mountains", negative_prompt="blurry", seed=41)
        assert mean_abs_diff(fetch_pixels(bodies[1]["result_urls"][1]), fetch_pixels(second_of_two["result_url"])) <= 1
        assert mean_abs_diff(fetch_pixels(bodies[0]["result_url"]), fetch_pixels(bodies[2]["result_url"])) > 1.0
    # One callback each, saying what its task says.
    _until_callbacks(receiver, ids)
    for task_id, body in zip(ids, bodies, strict=True):
        [callback] = _callbacks(receiver, task_id)
        assert callback["status"] == "completed" and callback["result_url"] == body["result_url"]


def test_a_task_cancelled_mid_batch_leaves_at_its_next_step_and_the_others_complete(batched, alone, receiver):
    with batched.client() as client:
        before = _batches_of(batched, 4)
        ids = [submit(client, **LONG, prompt=f"long {n}", seed=n, callback_url=receiver.url) for n in range(4)]
        running = _until_all(
            client, ids, lambda body: body["status"] == "processing" and (body["progress"] or {}).get("step", 0) >= 2
        )
        assert len({body["progress"]["total_steps"] for body in running}) == 1
        assert client.post(f"/api/v1/tasks/{ids[1]}/cancel").status_code == 200
        cancelled = wait_for_task(client, ids[1])
        assert cancelled["status"] == "failed" and cancelled["error_code"] == "cancelled"
        assert cancelled["progress"]["step"] < LONG["num_inference_steps"]
        # It left while the batch went on: the others are still running, and then complete.
        others = [ids[0], ids[2], ids[3]]
        assert all(client.get(f"/api/v1/tasks/{t}").json()["status"] == "processing" for t in others)
        done = [wait_for_task(client, task_id) for task_id in others]
        assert [body["status"] for body in done] == ["completed"] * 3, done
        assert all(body["progress"]["step"] == LONG["num_inference_steps"] for body in done)
        assert _batches_of(batched, 4) == before + 1
    with alone.client() as reference:
        own = generate(reference, **LONG, prompt="long 0", seed=0)
    assert mean_abs_diff(fetch_pixels(done[0]["result_url"]), fetch_pixels(own["result_url"])) <= 1.0
    _until_callbacks(receiver, ids)
    assert [c["error_code"] for c in _callbacks(receiver, ids[1])] == ["cancelled"]
    assert all(len(_callbacks(receiver, task_id)) == 1 for task_id in ids)


def test_a_member_whose_lease_is_lost_is_fenced_out_and_runs_again(batched, receiver):
    stored_before = _stored_images(batched)
    with batched.client() as client:
        # Fewer steps: the batch may even end before the reaper looks; the fence holds either way.
        shorter = LONG | {"num_inference_steps": 60}
        ids = [submit(client, **shorter, prompt=f"leased {n}", seed=n, callback_url=receiver.url) for n in range(4)]
        _until_all(
            client, ids, lambda body: body["status"] == "processing" and (body["progress"] or {}).get("step", 0) >= 2
        )
        # Another holder takes one member's lease (as the reaper does for a worker that froze past it): the
        # batch's renewal and outcome for that task are refused from now on.
        with sqlite3.connect(batched.config.database_path, timeout=30) as database:
            taken = database.execute(
                "UPDATE tasks SET lease_token = 'taken', lease_expires_at = 0 WHERE id = ? AND status = 'processing'",
                (ids[2],),
            ).rowcount
        assert taken == 1
        bodies = [wait_for_task(client, task_id) for task_id in ids]
    assert [body["status"] for body in bodies] == ["completed"] * 4, bodies
    # The three others completed in the batch; the fenced one was handed back and ran a second time.
    assert [body["attempts"] for body in bodies] == [1, 1, 2, 1]
    _until_callbacks(receiver, ids)
    for task_id, body in zip(ids, bodies, strict=True):
        [callback] = _callbacks(receiver, task_id)
        assert callback["status"] == "completed" and callback["result_url"] == body["result_url"]
    # The fenced run's image was deleted: one stored image per task, the fenced task's from its second run.
    added = _stored_images(batched) - stored_before
    assert added == {body["result_url"].rsplit("/", 1)[-1] for body in bodies}, added
