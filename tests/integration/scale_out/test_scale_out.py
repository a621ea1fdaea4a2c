"""Scale-out on PostgreSQL, every part real and in its own process: two API nodes (`sdapi serve --role api`), two
workers (`sdapi worker`), a PostgreSQL server, an S3 endpoint (moto) and a callback receiver, all on loopback.

The scenarios run in order on one cluster of processes (starting workers is the slow part); a scenario that kills
a process starts a new one before it ends.
"""

from __future__ import annotations

import collections
import itertools
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from minio import Minio

from tests.receivers import CallbackReceiver
from tests.support.postgres import PostgresCluster
from tests.support.services import API_KEY, ServiceProcess, WorkerProcess, submit, wait_for_task, write_config

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ACCESS_KEY = "scale-out-access"
SECRET_KEY = "scale-out-secret"
BUCKET = "sd-images"
# Long enough on this machine (one torch thread per worker) to kill, freeze or outlive a 3 s lease mid-run.
LONG = {"prompt": "a long one", "width": 384, "height": 384, "num_inference_steps": 100}
MAX_ATTEMPTS = 2
LEASE_SECONDS = 3
OTHER_KEY = "other-team-key-0123456789"


class Cluster:
    """The processes of one deployment, and what the tests need to reach them."""

    def __init__(self, config: Path, receiver: CallbackReceiver, postgres: PostgresCluster, s3: dict[str, Any]):
        self.config = config
        self.receiver = receiver
        self.postgres = postgres
        self.s3 = s3
        self.stack = ExitStack()
        # One thread each, as on a box with one GPU per worker: two workers share this machine's two cores.
        self.env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.apis: list[ServiceProcess] = [self.start_api(), self.start_api()]
        self.workers: list[WorkerProcess] = [self.start_worker(), self.start_worker()]
        self._turn = itertools.count()

    def start_api(self) -> ServiceProcess:
        api = self.stack.enter_context(ServiceProcess(self.config, env=self.env, role="api"))
        deadline = time.monotonic() + 180  # generous: a busy machine starts Python processes slowly
        while True:
            try:
                if httpx.get(f"{api.url}/health", timeout=2).status_code == 200:
                    return api
            except httpx.HTTPError:
                pass
            api.check_alive()
            assert time.monotonic() < deadline, api.log()
            time.sleep(0.1)

    def start_worker(self) -> WorkerProcess:
        return self.stack.enter_context(WorkerProcess(self.config, env=self.env))

    def client(self, index: int | None = None, key: str = API_KEY) -> httpx.Client:
        """A client of API node `index` (or of the next node in turn) with `key`."""
        api = self.apis[next(self._turn) % len(self.apis) if index is None else index]
        return httpx.Client(base_url=api.url, headers={"X-API-Key": key}, timeout=30)

    def health(self) -> dict[str, Any]:
        with self.client() as client:
            body: dict[str, Any] = client.get("/health").json()
            return body

    def _running_workers(self) -> dict[WorkerProcess, dict[str, Any]]:
        """The registry entries /health lists for the worker processes running now (a killed worker's entry stays
        listed until its heartbeat is a lease old)."""
        by_pid = {worker.pid: worker for worker in self.workers}
        entries = {}
        for entry in self.health()["workers"]:
            pid = int(entry["id"].split("-")[-2])  # ids are host-pid-random
            if pid in by_pid:
                entries[by_pid[pid]] = entry
        return entries

    def wait_for_workers(self, count: int, timeout: float = 180) -> None:
        """Until `count` running workers have their model loaded."""
        deadline = time.monotonic() + timeout
        while sum(entry["model_loaded"] for entry in self._running_workers().values()) < count:
            assert time.monotonic() < deadline, self.health()
            time.sleep(0.2)

    def worker_running(self, task_id: str, timeout: float = 60) -> WorkerProcess:
        """The worker process whose registry entry says it is running `task_id`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for worker, entry in self._running_workers().items():
                if entry["current_task"] == task_id:
                    return worker
            time.sleep(0.05)
        raise TimeoutError(f"no worker took {task_id}: {self.health()}")

    def replace_worker(self, dead: WorkerProcess) -> None:
        self.workers[self.workers.index(dead)] = self.start_worker()

    def callbacks_for(self, task_id: str) -> list[str]:
        """The webhook-ids of every POST the receiver got for `task_id`."""
        return [
            post.headers["webhook-id"]
            for post in self.receiver.received
            if f'"task_id":"{task_id}"' in post.body.decode()
        ]

    def stored_objects(self) -> set[str]:
        client = Minio(self.s3["endpoint"], access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False)
        return {item.object_name for item in client.list_objects(BUCKET, recursive=True)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, postgres, s3) -> Iterator[Cluster]:
    with CallbackReceiver() as receiver:
        config = write_config(
            tmp_path_factory.mktemp("scale-out"),
            tiny_model,
            store={"backend": "postgres", "postgres": {"dsn": postgres.new_database(), "pool_size": 4}},
            storage={
                "backend": "minio",
                "minio": {
                    "endpoint": s3["endpoint"],
                    "access_key": ACCESS_KEY,
                    "secret_key": SECRET_KEY,
                    "bucket": BUCKET,
                },
            },
            queue={"lease_seconds": LEASE_SECONDS, "max_attempts": MAX_ATTEMPTS, "shutdown_grace_seconds": 2},
            callbacks={"allowed_hosts": ["127.0.0.1/32"], "backoff_base": 0.3, "max_attempts": 20, "timeout": 2},
            limits={"max_inference_steps": 200},
            api={"keys": [API_KEY, {"key": OTHER_KEY, "name": "other-team"}]},
        )
        deployment = Cluster(config, receiver, postgres, s3)
        with deployment.stack:
            deployment.wait_for_workers(2)
            yield deployment


def _eventually(condition: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not reached in {timeout}s: {what}"
        time.sleep(0.1)


def test_tasks_submitted_to_both_nodes_complete_exactly_once(cluster):
    ids = []
    for n in range(20):
        with cluster.client() as client:
            ids.append(submit(client, prompt=f"task {n}", seed=n, callback_url=cluster.receiver.url))
    bodies = []
    for task_id in ids:
        with cluster.client(0) as first, cluster.client(1) as second:
            body = wait_for_task(first, task_id, timeout=120)
            assert body["status"] == "completed" and body["attempts"] == 1, body
            _eventually(
                lambda task_id=task_id: second.get(f"/api/v1/tasks/{task_id}").json()["callback_status"] == "delivered"
            )
            # Any node answers any task, with the same body.
            assert first.get(f"/api/v1/tasks/{task_id}").json() == second.get(f"/api/v1/tasks/{task_id}").json()
            bodies.append(body)
    assert len({body["result_url"] for body in bodies}) == 20
    for task_id in ids:
        assert len(set(cluster.callbacks_for(task_id))) == 1  # one webhook-id per task
    health = cluster.health()
    assert health["role"] == "api" and health["model_loaded"] is True and len(health["workers"]) == 2
    assert {worker["device"] for worker in health["workers"]} == {"cpu"}


def test_a_worker_killed_mid_task_leaves_it_to_the_other(cluster):
    with cluster.client() as client:
        task_id = submit(client, **LONG, seed=7, callback_url=cluster.receiver.url)
    victim = cluster.worker_running(task_id)
    victim.kill()
    with cluster.client() as client:
        body = wait_for_task(client, task_id, timeout=120)
    assert body["status"] == "completed" and body["attempts"] == 2, body
    _eventually(lambda: len(cluster.callbacks_for(task_id)) >= 1, what="the callback")
    assert len(set(cluster.callbacks_for(task_id))) == 1
    cluster.replace_worker(victim)
    cluster.wait_for_workers(2)


def test_a_frozen_worker_that_wakes_after_its_lease_changes_nothing(cluster):
    # A worker killed between its upload and its settle (possible in the test before) leaves its images behind;
    # what this test checks is that the frozen worker's late run adds no such orphan.
    orphans_before = cluster.stored_objects() - _referenced_objects(cluster)
    with cluster.client() as client:
        task_id = submit(client, **LONG, seed=8, callback_url=cluster.receiver.url)
    frozen = cluster.worker_running(task_id)
    frozen.send(signal.SIGSTOP)
    try:
        with cluster.client() as client:
            finished = wait_for_task(client, task_id, timeout=120)  # reaped, then run by the other worker
        assert finished["status"] == "completed" and finished["attempts"] == 2, finished
        _eventually(lambda: len(cluster.callbacks_for(task_id)) == 1, what="the callback")
    finally:
        frozen.send(signal.SIGCONT)
    # It finishes its stale run, finds the lease gone, writes nothing, sends nothing, deletes its images.
    _eventually(lambda: "lease lost before its outcome was written" in frozen.log(), timeout=120, what=frozen.log())
    with cluster.client() as client:
        assert client.get(f"/api/v1/tasks/{task_id}").json() == {
            **finished,
            "callback_status": "delivered",
            "callback_attempts": 1,
        }
    assert len(cluster.callbacks_for(task_id)) == 1
    key = finished["result_url"].split(f"/{BUCKET}/", 1)[1]
    _eventually(
        lambda: (
            key in cluster.stored_objects()
            and cluster.stored_objects() - _referenced_objects(cluster) == orphans_before
        ),
        what=f"orphans {cluster.stored_objects() - _referenced_objects(cluster)}; log: {frozen.log()[-3000:]}",
    )


def _referenced_objects(cluster: Cluster) -> set[str]:
    """Images the finished tasks refer to: every stored object must belong to one of them (no orphans)."""
    referenced = set()
    with cluster.client() as client:
        for post in cluster.receiver.received:
            body = httpx.Response(200, content=post.body).json()
            task = client.get(f"/api/v1/tasks/{body['task_id']}").json()
            referenced.update(
                url.split(f"/{BUCKET}/", 1)[1] for url in (task["result_urls"] or [task["result_url"]]) if url
            )
    return referenced


def test_an_api_node_killed_while_its_delivery_fails_leaves_it_to_the_other(cluster):
    cluster.receiver.script = [(500, 0.0)]
    survivor = cluster.apis[1]
    survivor.send(signal.SIGSTOP)  # only node 0 sends while the receiver fails
    try:
        with cluster.client(0) as client:
            task_id = submit(client, prompt="deliver me", seed=9, callback_url=cluster.receiver.url)
            assert wait_for_task(client, task_id)["status"] == "completed"
        _eventually(lambda: len(cluster.callbacks_for(task_id)) >= 2, what="two failed attempts")
        cluster.apis[0].kill()
    finally:
        survivor.send(signal.SIGCONT)
    cluster.receiver.script = [(200, 0.0)]
    with cluster.client(1) as client:
        _eventually(
            lambda: client.get(f"/api/v1/tasks/{task_id}").json()["callback_status"] == "delivered",
            what="delivery by the surviving node",
        )
    attempts = cluster.callbacks_for(task_id)
    assert len(attempts) >= 3 and len(set(attempts)) == 1  # the same webhook-id across retries and nodes
    cluster.apis[0] = cluster.start_api()


def test_a_postgres_restart_loses_and_duplicates_nothing_and_submits_get_503_meanwhile(cluster):
    ids = []
    for n in range(6):
        with cluster.client() as client:
            ids.append(
                submit(client, prompt=f"before the restart {n}", seed=100 + n, callback_url=cluster.receiver.url)
            )
    cluster.postgres.stop_server()
    try:
        with cluster.client() as client:
            refused = client.post("/api/v1/generate", json={"prompt": "during the outage"})
            assert refused.status_code == 503, refused.text
            assert refused.headers["Retry-After"].isdigit()
            assert refused.json()["detail"] == "任务数据库暂时不可用，请稍后重试"
            assert client.get(f"/api/v1/tasks/{ids[0]}").status_code == 503
    finally:
        cluster.postgres.start_server()
    with cluster.client() as client:
        _eventually(lambda: client.post("/api/v1/generate", json={"prompt": "after"}).status_code == 200, timeout=30)
    for task_id in ids:
        with cluster.client() as client:
            body = wait_for_task(client, task_id, timeout=120)
            assert body["status"] == "completed", body
        _eventually(lambda task_id=task_id: len(cluster.callbacks_for(task_id)) >= 1, what="the callback")
        assert len(set(cluster.callbacks_for(task_id))) == 1
    ids_seen = collections.Counter(
        httpx.Response(200, content=post.body).json()["task_id"] for post in cluster.receiver.received
    )
    assert all(ids_seen[task_id] >= 1 for task_id in ids)


def test_a_task_whose_attempts_are_spent_fails_with_one_callback(cluster):
    with cluster.client() as client:
        task_id = submit(client, **LONG, seed=10, callback_url=cluster.receiver.url)
    for _ in range(MAX_ATTEMPTS):
        victim = cluster.worker_running(task_id, timeout=90)
        victim.kill()
        cluster.replace_worker(victim)
    with cluster.client() as client:
        body = wait_for_task(client, task_id, timeout=120)
    assert body["status"] == "failed" and body["attempts"] == MAX_ATTEMPTS
    assert body["error_message"] == f"生成失败：任务运行时服务中断，已尝试 {MAX_ATTEMPTS} 次（上限 {MAX_ATTEMPTS} 次）"
    _eventually(lambda: len(cluster.callbacks_for(task_id)) == 1, what="the callback")
    time.sleep(LEASE_SECONDS)
    assert len(cluster.callbacks_for(task_id)) == 1


def test_workers_on_one_machine_share_one_sqlite_file(tmp_path, tiny_model):
    """No PostgreSQL: an API node and two workers on one box, one SQLite file and one data_dir (local images)."""
    config = write_config(tmp_path, tiny_model, queue={"lease_seconds": LEASE_SECONDS})
    env = {"OMP_NUM_THREADS": "1"}
    with (
        ServiceProcess(config, env=env, role="api") as api,
        WorkerProcess(config, env=env),
        WorkerProcess(config, env=env),
    ):
        api.wait_ready()
        with api.client() as client:
            ids = [submit(client, prompt=f"shared file {n}", seed=n, num_images=2) for n in range(8)]
            bodies = [wait_for_task(client, task_id, timeout=120) for task_id in ids]
            assert all(body["status"] == "completed" and body["attempts"] == 1 for body in bodies), bodies
            for body in bodies:
                for url in body["result_urls"]:
                    assert httpx.get(url).status_code == 200  # the API node serves what the workers stored
            health = client.get("/health").json()
    assert health["role"] == "api" and len(health["workers"]) == 2


def test_an_api_node_with_local_storage_refuses_workers_that_keep_images_elsewhere(tmp_path, tiny_model, postgres):
    import asyncio

    from sdapi.bootstrap import build_runtime
    from sdapi.config import load_config
    from sdapi.core.nodes import NodeInfo, Role
    from sdapi.errors import ConfigError

    dsn = postgres.new_database()
    config = load_config(write_config(tmp_path, tiny_model, store={"backend": "postgres", "postgres": {"dsn": dsn}}))

    async def scenario() -> None:
        worker_elsewhere = NodeInfo(
            id="gpu-box-42-abc",
            role=Role.WORKER,
            host="gpu-box",
            pid=42,
            started_at="2026-11-24T00:00:00Z",
            storage="local",
            data_dir="/srv/sdapi/data",
        )
        registry = build_runtime(config, role=Role.API)
        await registry.stores.database.open()
        await registry.stores.nodes.beat(worker_elsewhere)
        await registry.stores.database.close()
        api = build_runtime(config, role=Role.API)
        with pytest.raises(ConfigError, match="use MinIO"):
            await api.start()
        await api.stop()

    asyncio.run(scenario())


def test_any_api_node_cancels_a_task_running_on_any_worker(cluster):
    with cluster.client(0) as client:
        task_id = submit(client, **{**LONG, "num_inference_steps": 200}, seed=11, callback_url=cluster.receiver.url)
    cluster.worker_running(task_id)
    with cluster.client(1) as other:
        _eventually(lambda: (other.get(f"/api/v1/tasks/{task_id}").json()["progress"] or {}).get("step", 0) > 0)
        assert other.post(f"/api/v1/tasks/{task_id}/cancel").status_code == 200
        body = wait_for_task(other, task_id, timeout=60)
    assert body["status"] == "failed" and body["error_code"] == "cancelled"
    assert body["progress"]["step"] < body["progress"]["total_steps"]
    _eventually(lambda: len(cluster.callbacks_for(task_id)) == 1, what="the callback")


def test_isolation_and_idempotency_hold_across_api_nodes(cluster):
    body = {"prompt": "once, on any node", "seed": 21, "num_inference_steps": 2}
    headers = {"Idempotency-Key": "cross-node-1"}
    with cluster.client(0) as first, cluster.client(1) as second, cluster.client(1, OTHER_KEY) as other:
        created = first.post("/api/v1/generate", json=body, headers=headers)
        retried = second.post("/api/v1/generate", json=body, headers=headers)  # the client retried elsewhere
        assert created.status_code == retried.status_code == 200
        task_id = created.json()["task_id"]
        assert retried.json()["task_id"] == task_id
        assert second.post("/api/v1/generate", json={**body, "seed": 22}, headers=headers).status_code == 409
        # Another key's idempotency keys are its own: a new task.
        assert other.post("/api/v1/generate", json=body, headers=headers).json()["task_id"] != task_id
        assert wait_for_task(second, task_id)["status"] == "completed"
        assert other.get(f"/api/v1/tasks/{task_id}").status_code == 404
        assert other.post(f"/api/v1/tasks/{task_id}/rerun").status_code == 404
        assert task_id not in [task["task_id"] for task in other.get("/api/v1/tasks?limit=100").json()["tasks"]]
