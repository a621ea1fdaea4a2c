"""Model affinity, measured: two workers sharing a PostgreSQL queue, two models, one loaded at a time per worker,
and a queue that alternates between the models. How many model loads does it cost? Shared by the test and by
`make bench-affinity`."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from tests.support.services import ServiceProcess, WorkerProcess, submit, wait_for_task, write_config

# One torch thread per worker: two workers share a two-core machine as two GPUs would not.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TASK = {"prompt": "affinity", "width": 64, "height": 64, "num_inference_steps": 2}


def mixed_queue_loads(root: Path, models: dict[str, Path], dsn: str, tasks: int, affinity_max_wait: float) -> int:
    """Run `tasks` tasks alternating between `models` on two workers (max_loaded 1); return the model loads the
    workers made, their start-up loads included."""
    first = next(iter(models.values()))
    config = write_config(
        root,
        first,
        models=[{"name": name, "path": str(path)} for name, path in models.items()],
        model={"max_loaded": 1},
        store={"backend": "postgres", "postgres": {"dsn": dsn, "pool_size": 4}},
        queue={"max_pending": 1000, "affinity_max_wait_seconds": affinity_max_wait, "lease_seconds": 30},
    )
    names = list(models)
    with (
        ServiceProcess(config, env=ONE_THREAD, role="api") as api,
        WorkerProcess(config, env=ONE_THREAD) as first_worker,
        WorkerProcess(config, env=ONE_THREAD) as second_worker,
    ):
        _wait_for_workers(api.url, 2)
        with api.client() as client:
            ids = [submit(client, **TASK, model=names[n % len(names)], seed=n) for n in range(tasks)]
            for task_id in ids:
                assert wait_for_task(client, task_id, timeout=600)["status"] == "completed"
        workers = (first_worker, second_worker)
    return sum(_loads(worker.log()) for worker in workers)


def _loads(log: str) -> int:
    return sum(1 for line in log.splitlines() if "sdapi.engines.pool" in line and " loaded (" in line)


def _wait_for_workers(url: str, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            workers = httpx.get(f"{url}/health", timeout=5).json().get("workers", [])
            if sum(worker["model_loaded"] for worker in workers) >= count:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} workers did not load their model in {timeout}s")
        time.sleep(0.2)
