"""Tasks survive crashes and restarts; SIGTERM is graceful; the queue is bounded. Real processes, real kills."""

from __future__ import annotations

import sqlite3
import time

import httpx
import pytest

from tests.support.services import API_KEY, ServiceProcess, in_process, submit, wait_for_task, write_config

pytestmark = [pytest.mark.slow]

# ~2-5 s on two cores with the tiny model: long enough to kill or poll a task mid-run.
LONG = {"prompt": "a long one", "width": 512, "height": 512, "num_inference_steps": 120, "seed": 1}


def _wait_status(client, task_id, status, timeout=60.0):
    return wait_for_task(client, task_id, timeout=timeout, until=(status,))


def _stop_during_a_long_task(config, stop):
    """Start the service, submit a long task, and once it is processing stop the process with `stop`.

    Returns the task id and what `stop` returned (for terminate: whether the shutdown was clean).
    """
    with ServiceProcess(config) as process:
        process.wait_ready()
        with process.client() as client:
            task_id = submit(client, **LONG)
            _wait_status(client, task_id, "processing")
        return task_id, stop(process), process.log()


def test_a_full_queue_answers_429_with_retry_after_and_recovers(tmp_path, tiny_model):
    limits = {"max_pending": 2, "retry_after_seconds": 7}
    with in_process(tmp_path, tiny_model, queue=limits) as service, service.client() as client:
        accepted, refused = [], None
        for _ in range(6):
            response = client.post("/api/v1/generate", json={**LONG, "num_inference_steps": 40})
            if response.status_code == 429:
                refused = response
                break
            assert response.status_code == 200
            accepted.append(response.json()["task_id"])
        assert refused is not None, "the queue never filled"
        assert refused.headers["Retry-After"] == "7"
        assert isinstance(refused.json()["detail"], str)
        assert 2 <= len(accepted) <= 3  # two pending, plus possibly one already processing
        for task_id in accepted:
            assert wait_for_task(client, task_id)["status"] == "completed"
        assert client.post("/api/v1/generate", json={"prompt": "after"}).status_code == 200


def test_health_and_polls_answer_while_an_image_is_being_made(tmp_path, tiny_model):
    with in_process(tmp_path, tiny_model) as service, service.client() as client:
        task_id = submit(client, **LONG)
        _wait_status(client, task_id, "processing")
        answered = 0
        while client.get(f"/api/v1/tasks/{task_id}").json()["status"] == "processing":
            started = time.monotonic()
            assert httpx.get(service.url + "/health", timeout=10.0).status_code == 200
            answered += 1
            # Not a timing assertion on speed: a blocked event loop would stall the whole generation (tens of
            # seconds), so a bound this generous still catches it on a busy 2-core machine.
            assert time.monotonic() - started < 10.0
        assert answered >= 3, "the generation ended before the API could be polled during it"
        assert wait_for_task(client, task_id)["status"] == "completed"


def test_a_crash_loses_nothing_pending_and_processing_tasks_run_after_restart(tmp_path, tiny_model):
    config = write_config(tmp_path, tiny_model)
    with ServiceProcess(config) as first:
        first.wait_ready()
        with first.client() as client:
            interrupted = submit(client, **LONG)
            _wait_status(client, interrupted, "processing")
            queued = [submit(client, prompt="queued", seed=n) for n in range(2)]
        first.kill()
    with ServiceProcess(config) as second:
        second.wait_ready()
        with second.client() as client:
            body = wait_for_task(client, interrupted)
            assert body["status"] == "completed", body
            assert body["attempts"] == 2
            for task_id in queued:
                assert wait_for_task(client, task_id)["status"] == "completed"


def test_a_task_that_keeps_crashing_fails_after_max_attempts(tmp_path, tiny_model):
    config = write_config(tmp_path, tiny_model, queue={"max_attempts": 1})
    task_id, _, _ = _stop_during_a_long_task(config, ServiceProcess.kill)
    with ServiceProcess(config) as second:
        second.wait_ready()
        with second.client() as client:
            body = wait_for_task(client, task_id)
            assert body["status"] == "failed"
            assert "中断" in body["error_message"] and "1" in body["error_message"]
            assert body["error_code"] == "attempts_exhausted"
            assert body["result_url"] is None and body["result_urls"] is None


def test_sigterm_lets_the_running_task_finish(tmp_path, tiny_model):
    config = write_config(tmp_path, tiny_model, queue={"shutdown_grace_seconds": 60})
    task_id, clean, _ = _stop_during_a_long_task(config, ServiceProcess.terminate)
    assert clean
    with ServiceProcess(config) as second:
        second.wait_ready()
        with second.client() as client:
            body = client.get(f"/api/v1/tasks/{task_id}").json()
            assert body["status"] == "completed", body  # finished before the first process exited
            assert body["attempts"] == 1


def test_sigterm_past_the_grace_period_leaves_the_task_to_run_again(tmp_path, tiny_model):
    config = write_config(tmp_path, tiny_model, queue={"shutdown_grace_seconds": 0, "max_attempts": 1})
    task_id, clean, log = _stop_during_a_long_task(config, ServiceProcess.terminate)
    assert clean and "will run again" in log
    with ServiceProcess(config) as second:
        second.wait_ready()
        with second.client() as client:
            body = wait_for_task(client, task_id)
            # A clean shutdown gives the attempt back: with max_attempts 1 it still runs, and completes.
            assert body["status"] == "completed", body
            assert body["attempts"] == 1


def test_a_database_fault_is_a_500_without_a_stack_trace(tmp_path, tiny_model):
    with in_process(tmp_path, tiny_model) as service, service.client() as client:
        task_id = submit(client, prompt="a cat")
        wait_for_task(client, task_id)
        with sqlite3.connect(service.config.database_path) as db:
            db.execute("DROP TABLE tasks")
        response = client.get(f"/api/v1/tasks/{task_id}")
        assert response.status_code == 500
        assert response.json() == {"detail": "服务器内部错误"}
        assert "Traceback" not in response.text


@pytest.mark.parametrize("header", ["X-API-Key", "Authorization-Key"])
def test_the_key_header_name_comes_from_config(tmp_path, tiny_model, header):
    with in_process(tmp_path, tiny_model, api={"key_header": header}) as service:
        with service.client(header=header) as client:
            assert client.get("/api/v1/tasks/none").status_code == 404
        other = "X-Other-Key" if header == "Authorization-Key" else "Authorization-Key"
        with service.client(header=other) as client:
            assert client.get("/api/v1/tasks/none").status_code == 401


def test_public_base_url_makes_the_result_urls(tmp_path, tiny_model):
    public = {"public_base_url": "https://sd.example.com/"}
    with in_process(tmp_path, tiny_model, server=public) as service, service.client() as client:
        body = wait_for_task(client, submit(client, prompt="a cat"))
        assert body["result_url"].startswith("https://sd.example.com/images/")
        local = body["result_url"].replace("https://sd.example.com", service.url)
        assert httpx.get(local).status_code == 200


def test_keys_from_the_environment_replace_the_file(tmp_path, tiny_model):
    config = write_config(tmp_path, tiny_model)
    with ServiceProcess(config, env={"SDAPI_API_KEYS": "env-key-1, env-key-2"}) as process:
        process.wait_ready()
        for key, status in [("env-key-2", 404), ("env-key-1", 404), (API_KEY, 401)]:
            with process.client(key=key) as client:
                assert client.get("/api/v1/tasks/none").status_code == status
