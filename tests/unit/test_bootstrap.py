"""The worker, the task service and the callback sender on in-memory fakes, through the real composition root.

These are the paths HTTP cannot reach reliably: a store that fails just as a finished task is recorded, a store
outage in the middle of the loop, a shutdown while a record is in flight, two submits racing for the last place.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from sdapi.bootstrap import Runtime, build_runtime
from sdapi.config import Config, config_from_mapping
from sdapi.core.deliveries import DeliveryStatus
from sdapi.core.request import GenerationRequest
from sdapi.core.tasks import TaskStatus
from sdapi.errors import ErrorCode, GenerationFailed, QueueFull, ServiceError
from sdapi.worker.generation_thread import GENERATION_THREAD_NAME
from tests.fakes import FakeEngine, MemoryDatabase, MemoryOutbox, MemoryStorage, MemoryTaskStore, memory_stores
from tests.receivers import CallbackReceiver
from tests.support.services import data_url, gradient_image


def _config(tmp_path: Path, **queue: object) -> Config:
    return config_from_mapping(
        {
            "data_dir": str(tmp_path),
            "api": {"keys": ["unit-test-key"]},
            # Short timeouts: a delivery's claim (resolve + POST + 1 s) runs out soon after a lost record.
            "callbacks": {
                "allowed_hosts": ["127.0.0.1/32"],
                "backoff_base": 0.05,
                "timeout": 0.5,
                "resolve_timeout": 0.5,
            },
            "defaults": {"width": 64, "height": 64, "num_inference_steps": 1},
            "queue": {"shutdown_grace_seconds": 0.2, **queue},
        },
        environ={},
    )


def _runtime(tmp_path: Path, **queue: object) -> tuple[Runtime, MemoryTaskStore, MemoryDatabase, MemoryStorage]:
    stores, tasks, database = memory_stores()
    storage = MemoryStorage()
    runtime = build_runtime(_config(tmp_path, **queue), engine=FakeEngine(), stores=stores, storage=storage)
    return runtime, tasks, database, storage


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def _run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def test_a_failed_record_after_generation_is_retried_and_the_task_completes(tmp_path):
    runtime, tasks, database, storage = _runtime(tmp_path)
    tasks.failing_terminal_writes = 3  # the store fails three times just as the finished task is recorded

    async def scenario() -> None:
        await runtime.start()
        task = await runtime.service.submit(GenerationRequest(prompt="a cat", num_images=2), None)
        await _until(lambda: database.tasks[task.id].status.is_terminal)
        finished = database.tasks[task.id]
        assert finished.status is TaskStatus.COMPLETED and finished.attempts == 1
        assert len(finished.result_keys) == 2 and set(finished.result_keys) <= set(storage.objects)
        assert tasks.failing_terminal_writes == 0
        # The worker goes on with the next task.
        second = await runtime.service.submit(GenerationRequest(prompt="a dog"), None)
        await _until(lambda: database.tasks[second.id].status is TaskStatus.COMPLETED)
        await runtime.stop()

    _run(scenario)


def test_a_store_outage_in_the_loop_does_not_stop_the_worker(tmp_path):
    runtime, _, database, _ = _runtime(tmp_path)

    async def scenario() -> None:
        await runtime.start()
        database.outage = True
        calls = database.calls
        await _until(lambda: database.calls > calls + 1)  # the worker kept polling through the outage
        database.outage = False
        task = await runtime.service.submit(GenerationRequest(prompt="after the outage"), None)
        await _until(lambda: database.tasks[task.id].status is TaskStatus.COMPLETED)
        await runtime.stop()
        assert database.closed

    _run(scenario)


def test_shutdown_while_a_record_is_in_flight_gives_the_attempt_back(tmp_path):
    runtime, tasks, database, _ = _runtime(tmp_path)
    engine = runtime.engine
    assert isinstance(engine, FakeEngine)

    async def scenario() -> None:
        tasks.terminal_write_gate = asyncio.Event()  # the finished task's write hangs (never released)
        await runtime.start()
        task = await runtime.service.submit(GenerationRequest(prompt="stuck at the end"), None)
        await _until(lambda: engine.runs == 1 and runtime.worker.busy)
        await runtime.stop()  # grace 0.2 s: the record never finishes, so the run is handed back
        stopped = database.tasks[task.id]
        assert stopped.status is TaskStatus.PENDING and stopped.attempts == 0

    _run(scenario)


def test_admission_is_one_atomic_step(tmp_path):
    runtime, _, database, _ = _runtime(tmp_path, max_pending=3)

    async def scenario() -> None:
        # Not started: nothing takes tasks, so the queue only fills. Ten submits race for three places.
        results = await asyncio.gather(
            *(runtime.service.submit(GenerationRequest(prompt=f"p{n}"), None) for n in range(10)),
            return_exceptions=True,
        )
        admitted = [result for result in results if not isinstance(result, BaseException)]
        refused = [result for result in results if isinstance(result, QueueFull)]
        assert len(admitted) == 3 and len(refused) == 7
        assert sum(task.status is TaskStatus.PENDING for task in database.tasks.values()) == 3
        await runtime.stop()

    _run(scenario)


@pytest.mark.parametrize("fail_reads", [True, False])
def test_reading_a_task_while_the_store_is_down_is_a_service_error(tmp_path, fail_reads):
    runtime, _, database, _ = _runtime(tmp_path)

    async def scenario() -> None:
        task = await runtime.service.submit(GenerationRequest(prompt="x"), "http://testserver")
        database.outage = fail_reads
        if fail_reads:
            with pytest.raises(ServiceError):
                await runtime.service.get(task.id, "http://testserver")
        else:
            view = await runtime.service.get(task.id, "http://testserver")
            assert view.task.id == task.id and view.result_url is None
        database.outage = False
        await runtime.stop()

    _run(scenario)


def test_a_delivery_whose_outcome_could_not_be_recorded_at_first_is_recorded_not_sent_again(tmp_path):
    runtime, _, database, _ = _runtime(tmp_path)
    outbox = runtime.stores.outbox
    assert isinstance(outbox, MemoryOutbox)
    outbox.failing_records = 3  # the first POST succeeds, but recording that it did fails three times

    async def scenario() -> None:
        with CallbackReceiver() as receiver:
            await runtime.start()
            task = await runtime.service.submit(GenerationRequest(prompt="x", callback_url=receiver.url), None)
            await _until(lambda: any(d.status is DeliveryStatus.DELIVERED for d in database.deliveries.values()))
            await runtime.stop()
        posts = receiver.received
        assert len(posts) == 1  # the acknowledged outcome was kept and written once the store answered
        assert outbox.failing_records == 0
        assert database.tasks[task.id].status is TaskStatus.COMPLETED

    _run(scenario)


class SlowStorage(MemoryStorage):
    """Image storage whose uploads wait until `release` is set (a slow or far-away bucket)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.uploading = threading.Event()

    def save(self, key: str, data: bytes, content_type: str) -> None:
        self.uploading.set()
        assert self.release.wait(timeout=60), "the test never released the upload"
        super().save(key, data, content_type)


def test_the_next_task_generates_while_the_last_ones_images_upload(tmp_path):
    stores, _, database = memory_stores()
    storage = SlowStorage()
    engine = FakeEngine()
    runtime = build_runtime(_config(tmp_path), engine=engine, stores=stores, storage=storage)

    async def scenario() -> None:
        await runtime.start()
        first = await runtime.service.submit(GenerationRequest(prompt="first"), None)
        second = await runtime.service.submit(GenerationRequest(prompt="second"), None)
        # The first task's upload is held; the engine still starts (and here finishes) the second task.
        await _until(lambda: storage.uploading.is_set() and engine.runs == 2)
        assert database.tasks[first.id].status is TaskStatus.PROCESSING
        assert not storage.objects  # nothing stored yet: the first upload is still waiting
        storage.release.set()
        await _until(lambda: all(database.tasks[task.id].status is TaskStatus.COMPLETED for task in (first, second)))
        assert len(storage.objects) == 2
        await runtime.stop()

    try:
        _run(scenario)
    finally:
        storage.release.set()


def test_the_generation_thread_does_no_storage_io(tmp_path):
    stores, _, database = memory_stores()
    threads: set[str] = set()

    class RecordingStorage(MemoryStorage):
        def save(self, key: str, data: bytes, content_type: str) -> None:
            threads.add(threading.current_thread().name)
            super().save(key, data, content_type)

    runtime = build_runtime(_config(tmp_path), engine=FakeEngine(), stores=stores, storage=RecordingStorage())

    async def scenario() -> None:
        await runtime.start()
        task = await runtime.service.submit(GenerationRequest(prompt="where is it stored", num_images=2), None)
        await _until(lambda: database.tasks[task.id].status is TaskStatus.COMPLETED)
        await runtime.stop()

    _run(scenario)
    assert threads and GENERATION_THREAD_NAME not in threads


def test_a_store_outage_while_staging_the_images_does_not_fail_the_task(tmp_path):
    runtime, tasks, database, storage = _runtime(tmp_path)
    tasks.failing_stages = 3  # the database is away just as the run records the keys it is about to upload

    async def scenario() -> None:
        await runtime.start()
        task = await runtime.service.submit(GenerationRequest(prompt="through the outage", num_images=2), None)
        await _until(lambda: database.tasks[task.id].status.is_terminal)
        finished = database.tasks[task.id]
        assert finished.status is TaskStatus.COMPLETED and finished.attempts == 1
        assert set(finished.result_keys) == set(storage.objects)
        await runtime.stop()

    _run(scenario)


def _batching_runtime(tmp_path: Path, **queue: object) -> tuple[Runtime, MemoryTaskStore, MemoryDatabase, FakeEngine]:
    stores, tasks, database = memory_stores()
    engine = FakeEngine()
    runtime = build_runtime(_config(tmp_path, **queue), engine=engine, stores=stores, storage=MemoryStorage())
    return runtime, tasks, database, engine


def test_companions_that_arrive_within_the_wait_share_one_batch_and_are_recorded_each(tmp_path):
    runtime, _, database, engine = _batching_runtime(tmp_path, batch_max=4, batch_wait_ms=10_000)

    async def scenario() -> None:
        await runtime.start()
        # The first is claimed at once; the worker waits for companions until the batch is full (4 images).
        submitted = [
            await runtime.service.submit(GenerationRequest(prompt=f"task {n}", seed=n, num_images=n), None)
            for n in (1, 2, 1)
        ]
        await _until(lambda: all(database.tasks[t.id].status.is_terminal for t in submitted))
        assert engine.batches == [3]
        for task in submitted:
            finished = database.tasks[task.id]
            assert finished.status is TaskStatus.COMPLETED and finished.attempts == 1
            assert len(finished.result_keys) == task.params.num_images
        await runtime.stop()

    _run(scenario)


def test_a_failing_companion_claim_runs_the_task_alone(tmp_path):
    runtime, tasks, database, engine = _batching_runtime(tmp_path, batch_max=4, batch_wait_ms=0)
    tasks.failing_companion_claims = 1

    async def scenario() -> None:
        await runtime.start()
        task = await runtime.service.submit(GenerationRequest(prompt="alone"), None)
        await _until(lambda: database.tasks[task.id].status.is_terminal)
        assert database.tasks[task.id].status is TaskStatus.COMPLETED
        assert tasks.failing_companion_claims == 0 and engine.batches == []
        await runtime.stop()

    _run(scenario)


def test_a_member_whose_inputs_do_not_open_fails_alone(tmp_path):
    runtime, _, database, engine = _batching_runtime(tmp_path, batch_max=3, batch_wait_ms=10_000)
    init = data_url(gradient_image(64, 64))

    async def scenario() -> None:
        await runtime.start()
        first = await runtime.service.submit(GenerationRequest(prompt="a", init_image=init, strength=0.5), None)
        broken = await runtime.service.submit(GenerationRequest(prompt="b", init_image=init, strength=0.5), None)
        database.init_images[broken.id] = b"not an image"  # read only once the batch is full
        third = await runtime.service.submit(GenerationRequest(prompt="c", init_image=init, strength=0.5), None)
        submitted = (first, broken, third)
        await _until(lambda: all(database.tasks[t.id].status.is_terminal for t in submitted))
        assert engine.batches == [2]
        assert [database.tasks[t.id].status for t in submitted] == [
            TaskStatus.COMPLETED,
            TaskStatus.FAILED,
            TaskStatus.COMPLETED,
        ]
        await runtime.stop()

    _run(scenario)


def test_a_batch_that_fails_fails_each_member_with_its_message(tmp_path):
    stores, _, database = memory_stores()
    engine = FailingBatchEngine()
    config = _config(tmp_path, batch_max=2, batch_wait_ms=2_000)  # a task alone waits this long for companions
    runtime = build_runtime(config, engine=engine, stores=stores, storage=MemoryStorage())

    async def scenario() -> None:
        await runtime.start()
        submitted = [await runtime.service.submit(GenerationRequest(prompt=p), None) for p in ("x", "y")]
        await _until(lambda: all(database.tasks[t.id].status.is_terminal for t in submitted))
        for task in submitted:
            failed = database.tasks[task.id]
            assert failed.status is TaskStatus.FAILED and failed.error_message == "显存不足（fake）"
        # The worker goes on.
        after = await runtime.service.submit(GenerationRequest(prompt="after", width=128), None)
        await _until(lambda: database.tasks[after.id].status is TaskStatus.COMPLETED)
        await runtime.stop()

    _run(scenario)


class FailingBatchEngine(FakeEngine):
    """A FakeEngine whose batches run out of memory."""

    def generate_batch(self, members):
        raise GenerationFailed("显存不足（fake）", ErrorCode.OUT_OF_MEMORY)
