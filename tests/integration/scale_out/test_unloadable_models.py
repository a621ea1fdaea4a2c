"""A worker that cannot load a model stops taking its tasks: it says so in the registry (/health, GET
/api/v1/models), leaves them to a worker that can, and a task fails model_not_loaded only when no live worker can
run it. Real processes on one PostgreSQL database: an API node and two workers whose configs differ (one has a
broken path for the second model)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import ServiceProcess, WorkerProcess, submit, wait_for_task, write_config

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SMALL = {"prompt": "two workers", "width": 64, "height": 64, "num_inference_steps": 2}


def _until(condition, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
    return value


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, tiny_model: Path, tiny_sd2v: Path, postgres) -> Iterator[dict[str, object]]:
    root = tmp_path_factory.mktemp("unloadable")
    broken = root / "not-a-model"
    broken.mkdir()
    common = {
        "data_dir": str(root / "data"),
        "store": {"backend": "postgres", "postgres": {"dsn": postgres.new_database()}},
        # Long leases: a worker frozen with SIGSTOP stays live in the registry meanwhile (heartbeats are a lease).
        "queue": {"lease_seconds": 30},
    }

    def models(second: Path) -> list[dict[str, object]]:
        return [{"name": "default", "path": str(tiny_model), "default": True}, {"name": "second", "path": str(second)}]

    good = write_config(root / "good", tiny_model, models=models(tiny_sd2v), **common)
    bad = write_config(root / "bad", tiny_model, models=models(broken), **common)
    with ServiceProcess(good, role="api") as api, WorkerProcess(bad) as failing, WorkerProcess(good) as able:
        _until(lambda: _alive(api), "the API node did not answer")
        with api.client() as client:
            _until(lambda: len(client.get("/health").json()["workers"]) == 2, "two workers in the registry")
        yield {"api": api, "failing": failing, "able": able}


def _alive(api: ServiceProcess) -> bool:
    api.check_alive()
    try:
        with api.client() as client:
            return client.get("/health").status_code == 200
    except Exception:
        return False


def test_the_worker_that_can_load_the_model_runs_all_of_its_tasks(deployment):
    api, able = deployment["api"], deployment["able"]
    with api.client() as client:
        # The able worker is frozen (still live in the registry), so the failing one claims a task of "second",
        # fails to load it, and from then on leaves those tasks in the queue for the able one.
        able.send(signal.SIGSTOP)
        try:
            ids = [submit(client, **SMALL, model="second", seed=n) for n in range(6)]

            def failing_worker() -> dict[str, object] | None:
                workers = client.get("/health").json()["workers"]
                return next((worker for worker in workers if worker["models_failed"]), None)

            failing = _until(failing_worker, "the failing worker never reported its failed load")
            assert set(failing["models_failed"]) == {"second"} and failing["models_failed"]["second"]
            time.sleep(1)  # not a wait for a condition: the tasks must stay pending, not fail, while it is alone
            assert {client.get(f"/api/v1/tasks/{task_id}").json()["status"] for task_id in ids} == {"pending"}
        finally:
            able.send(signal.SIGCONT)
        ids += [submit(client, **SMALL, seed=10 + n) for n in range(2)]
        bodies = [wait_for_task(client, task_id, timeout=300) for task_id in ids]
        assert all(body["status"] == "completed" for body in bodies), bodies
        listed = {model["name"]: model for model in client.get("/api/v1/models").json()["models"]}
        assert set(listed["second"]["load_errors"]) == {failing["id"]} and listed["default"]["load_errors"] == {}
    assert "could not be loaded" in deployment["failing"].log()


def test_with_no_live_worker_able_to_load_it_the_task_fails_model_not_loaded(deployment):
    api, able = deployment["api"], deployment["able"]
    able.send(signal.SIGTERM)  # a graceful stop, which leaves the registry
    able.process.wait(timeout=60)
    with api.client() as client:
        _until(lambda: len(client.get("/health").json()["workers"]) == 1, "the able worker left the registry")
        body = wait_for_task(client, submit(client, **SMALL, model="second"), timeout=300)
        assert body["status"] == "failed" and body["error_code"] == "model_not_loaded", body
        assert body["error_message"]
        # The failing worker still serves what it can load.
        assert wait_for_task(client, submit(client, **SMALL), timeout=300)["status"] == "completed"
