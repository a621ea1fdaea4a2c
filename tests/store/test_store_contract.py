"""One contract for every store: SQLite, PostgreSQL (a real server) and the in-memory fake the unit tests use must
behave alike on claim, renew, reap, fenced settle, the outbox's claims, admission and the node registry; the two
databases also on migrations (which the fake does not have: those tests take `open_sql_stores`)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import psutil
import psycopg
import pytest

from sdapi.core import tasks
from sdapi.core.deliveries import DeliveryStatus, after_attempt, new_delivery
from sdapi.core.nodes import NodeInfo, Role
from sdapi.core.params import HiresParams
from sdapi.core.tasks import Progress, Task, TaskStatus
from sdapi.errors import TaskNotFound, TaskStoreError
from sdapi.store import IdempotencyKey, Lease, RunRequests, Stores
from sdapi.store.postgres import open_postgres
from sdapi.store.sqlite import open_sqlite
from tests.fakes import MemoryDatabase, memory_stores
from tests.support.factories import make_params
from tests.support.postgres import PostgresCluster

Opener = Callable[[], Stores]


def _opener(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if kind == "memory":
        database = MemoryDatabase()
        return lambda: memory_stores(database)[0]
    if kind == "sqlite":
        path = tmp_path / "tasks.sqlite3"
        return lambda: open_sqlite(path)
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    dsn = cluster.new_database()
    return lambda: open_postgres(dsn, 4)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "memory"])
def open_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens another set of stores (another "node") on one fresh database of the parametrised kind."""
    return _opener(request.param, request, tmp_path)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def open_sql_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """`open_stores` for the two databases alone: schema migrations, which the in-memory fake does not have."""
    return _opener(request.param, request, tmp_path)


@asynccontextmanager
async def opened(opener: Opener) -> AsyncIterator[Stores]:
    stores = opener()
    await stores.database.open()
    try:
        yield stores
    finally:
        await stores.database.close()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


def new_task(**params: object) -> Task:
    return tasks.create(make_params(**params))


def test_claims_take_the_oldest_pending_task_once_with_a_lease(open_stores):
    async def scenario() -> None:
        async with opened(open_stores) as stores:
            first, second = new_task(), new_task()
            assert await stores.tasks.add(first, None, 10) and await stores.tasks.add(second, None, 10)
            lease = await stores.tasks.claim("worker-a", 30)
            assert lease is not None and lease.task.id == first.id and lease.token
            assert lease.task.status is TaskStatus.PROCESSING and lease.task.attempts == 1
            stored = await stores.tasks.get(first.id)
            assert stored.status is TaskStatus.PROCESSING and stored.attempts == 1
            assert stored.updated_at >= first.updated_at
            other = await stores.tasks.claim("worker-b", 30)
            assert other is not None and other.task.id == second.id and other.token != lease.token
            assert await stores.tasks.claim("worker-c", 30) is None
            assert await stores.tasks.count(TaskStatus.PROCESSING) == 2
            assert await stores.tasks.count(TaskStatus.PENDING) == 0

    run(scenario)


def test_claims_prefer_the_workers_loaded_models_until_a_task_waited_too_long(open_stores):
    async def scenario() -> None:
        async with opened(open_stores) as stores:
            xl_old, base, xl_new, legacy = (new_task(model=m) for m in ("xl", "base", "xl", None))
            for task in (xl_old, base, xl_new, legacy):
                assert await stores.tasks.add(task, None, 10)
            # A worker with "base" loaded takes base's task first, though two xl tasks are older...
            first = await stores.tasks.claim("w", 30, loaded=["base"], affinity_max_wait=3600)
            assert first is not None and first.task.id == base.id
            # ...then a task from before models were recorded (it runs anywhere), then, with nothing left for
            # its models, the oldest of the rest.
            second = await stores.tasks.claim("w", 30, loaded=["base"], affinity_max_wait=3600)
            assert second is not None and second.task.id == legacy.id
            third = await stores.tasks.claim("w", 30, loaded=["base"], affinity_max_wait=3600)
            assert third is not None and third.task.id == xl_old.id
            # No starvation: past affinity_max_wait, the oldest task goes first whatever its model.
            fresh_base = new_task(model="base")
            assert await stores.tasks.add(fresh_base, None, 10)
            fourth = await stores.tasks.claim("w", 30, loaded=["base"], affinity_max_wait=0.0)
            assert fourth is not None and fourth.task.id == xl_new.id
            # Without loaded models: plain oldest first.
            assert (await stores.tasks.claim("w", 30)).task.id == fresh_base.id

    run(scenario)


def test_claims_leave_the_tasks_of_skipped_models_to_other_workers(open_stores):
    async def scenario() -> None:
        async with opened(open_stores) as stores:
            broken, legacy, base = (new_task(model=m) for m in ("broken", None, "base"))
            for task in (broken, legacy, base):
                assert await stores.tasks.add(task, None, 10)
            # A worker that cannot load "broken" never takes its task; a task without a model runs anywhere.
            first = await stores.tasks.claim("a", 30, loaded=["base"], skip=["broken"])
            second = await stores.tasks.claim("a", 30, skip=["broken"])
            assert {first.task.id, second.task.id} == {legacy.id, base.id}
            assert await stores.tasks.claim("a", 30, skip=["broken", "other"]) is None
            # Another worker, which can, takes it.
            taken = await stores.tasks.claim("b", 30, skip=["other"])
            assert taken is not None and taken.task.id == broken.id

    run(scenario)


def test_companions_are_the_oldest_compatible_pending_tasks_that_fit_the_room(open_stores):
    async def scenario() -> None:
        async with opened(open_stores) as stores:
            first = new_task(prompt="first", seed=1)
            other_size = new_task(prompt="wider", width=768)
            big = new_task(prompt="three images", num_images=3)
            a, b, c = (new_task(prompt=f"companion {n}", seed=n, negative_prompt="blur") for n in range(3))
            for task in (first, other_size, big, a, b, c):
                assert await stores.tasks.add(task, None, 10)
            lease = await stores.tasks.claim("w", 30)
            assert lease is not None and lease.task.id == first.id
            # Room for two more images: the three-image task is passed over, the next two fit; the 768-wide one
            # never shares this batch.
            companions = await stores.tasks.claim_companions("w", 30, lease.task, room=2)
            assert [c.task.id for c in companions] == [a.id, b.id]
            for companion in companions:
                assert companion.task.status is TaskStatus.PROCESSING and companion.task.attempts == 1
                assert companion.token and await stores.tasks.renew(companion, 30)
                stored = await stores.tasks.get(companion.task.id)
                assert stored.status is TaskStatus.PROCESSING and stored.started_at is not None
            # Each companion's lease fences its own task only.
            done = tasks.complete(companions[0].task, ["k.png"], "torch")
            assert await stores.tasks.settle(companions[0], done)
            assert not await stores.tasks.settle(Lease(companions[1].task, companions[0].token), done)
            assert (await stores.tasks.get(companions[1].task.id)).status is TaskStatus.PROCESSING
            # Room for three: the three-image task now fits (c comes after it).
            more = await stores.tasks.claim_companions("w", 30, lease.task, room=3)
            assert [m.task.id for m in more] == [big.id]
            assert [m.task.id for m in await stores.tasks.claim_companions("w", 30, lease.task, room=8)] == [c.id]
            assert await stores.tasks.claim_companions("w", 30, lease.task, room=8) == []
            # A task that always runs alone (a second pass) has no companions.
            hires = new_task(hires=HiresParams(width=1024, height=1024, upscaler="Latent", steps=5, strength=0.5))
            twin = new_task(hires=HiresParams(width=1024, height=1024, upscaler="Latent", steps=5, strength=0.5))
            assert await stores.tasks.add(hires, None, 10) and await stores.tasks.add(twin, None, 10)
            alone = await stores.tasks.claim("w", 30)
            assert alone is not None and alone.task.id == other_size.id
            alone = await stores.tasks.claim("w", 30)
            assert alone is not None and alone.task.id == hires.id
            assert await stores.tasks.claim_companions("w", 30, alone.task, room=8) == []

    run(scenario)


def _two_nodes_drain(open_stores: Opener, added: list[Task], companions: int = 0) -> None:
    """Two nodes claim `added` at once until none is left (each claim with up to `companions` more images): every
    task is taken, and by one node only."""

    async def scenario() -> None:
        async with opened(open_stores) as a, opened(open_stores) as b:
            for task in added:
                assert await a.tasks.add(task, None, 100)

            async def drain(stores: Stores, name: str) -> list[str]:
                taken = []
                while (lease := await stores.tasks.claim(name, 30)) is not None:
                    taken.append(lease.task.id)
                    if companions:
                        more = await stores.tasks.claim_companions(name, 30, lease.task, companions)
                        taken.extend(companion.task.id for companion in more)
                return taken

            taken_a, taken_b = await asyncio.gather(drain(a, "a"), drain(b, "b"))
            assert sorted(taken_a + taken_b) == sorted(task.id for task in added)
            assert not set(taken_a) & set(taken_b)

    run(scenario)


def test_two_workers_claiming_companions_at_once_never_share_a_task(open_stores):
    _two_nodes_drain(open_stores, [new_task(prompt=f"same batch {n}", seed=n) for n in range(16)], companions=3)


def test_two_nodes_claiming_at_once_never_take_the_same_task(open_stores):
    _two_nodes_drain(open_stores, [new_task() for _ in range(12)])


def test_admission_is_atomic_across_nodes(open_stores):
    async def scenario() -> None:
        async with opened(open_stores) as a, opened(open_stores) as b:
            results = await asyncio.gather(*((a if n % 2 else b).tasks.add(new_task(), None, 3) for n in range(12)))
            assert sum(results) == 3
            assert await a.tasks.count(TaskStatus.PENDING) == 3

    run(scenario)


def test_settle_is_fenced_by_the_lease_and_records_the_delivery_with_the_task(open_stores):
    async def scenario() -> None:
        async with opened(open_stores) as stores:
            task = new_task(callback_url="https://receiver.example/hook")
            assert await stores.tasks.add(task, b"init-bytes", 10)
            lease = await stores.tasks.claim("w", 30)
            assert lease is not None
            completed = tasks.complete(lease.task, ["k.png"], "torch")
            delivery = new_delivery(task.id, "https://receiver.example/hook", time.time())
            forged = Lease(lease.task, "not-the-lease")
            assert not await stores.tasks.settle(forged, completed, delivery)
            assert await stores.outbox.for_task(task.id) is None
            assert await stores.init_images.get(task.id) == b"init-bytes"
            assert await stores.tasks.settle(lease, completed, delivery)
            stored = await stores.tasks.get(task.id)
            assert stored.status is TaskStatus.COMPLETED and stored.result_keys == ("k.png",)
            assert (await stores.outbox.for_task(task.id)) == delivery
            assert await stores.init_images.get(task.id) is None  # dropped with the terminal write
            # A second outcome under the same lease changes nothing: one terminal state, ever.
            assert not await stores.tasks.settle(lease, tasks.fail(lease.task, "late"), None)
            assert (await stores.tasks.get(task.id)).status is TaskStatus.COMPLETED
            assert not await stores.tasks.renew(lease, 30)

    run(scenario)


def test_expired_leases_are_reaped_and_the_late_worker_is_fenced_out(open_stores):
    async def scenario() -> None:
        async with opened(open_stores) as stores:
            task = new_task()
            assert await stores.tasks.add(task, None, 10)
            stale = await stores.tasks.claim("frozen", 0.2)
            assert stale is not None
            assert await stores.tasks.expired(10) == []
            await asyncio.sleep(0.4)
            [expired] = await stores.tasks.expired(10)
            assert expired.task.id == task.id and expired.token == stale.token
            requeued = tasks.recover_interrupted(expired.task, max_attempts=3)
            assert await stores.tasks.reap(expired, requeued)
            assert not await stores.tasks.reap(expired, requeued)  # a second reaper finds nothing to do
            fresh = await stores.tasks.claim("healthy", 30)
            assert fresh is not None and fresh.task.id == task.id and fresh.task.attempts == 2
            # The frozen worker wakes up: its renewal and its outcome are both refused.
            assert not await stores.tasks.renew(stale, 30)
            assert not await stores.tasks.settle(stale, tasks.complete(stale.task, ["late.png"], "torch"))
            assert await stores.tasks.settle(fresh, tasks.complete(fresh.task, ["k.png"], "torch"))
            final = await stores.tasks.get(task.id)
            assert final.result_keys == ("k.png",) and final.attempts == 2

    run(scenario)


def test_staged_keys_are_fenced_read_with_an_expired_lease_and_cleared_by_the_outcome(open_stores):
    async def scenario() -> None:
        async with opened(open_stores) as stores:
            lost, kept = new_task(), new_task()
            assert await stores.tasks.add(lost, None, 10) and await stores.tasks.add(kept, None, 10)
            stale = await stores.tasks.claim("killed", 0.2)
            assert stale is not None and stale.task.id == lost.id
            assert await stores.tasks.stage(stale, ["a.png", "b.png"])
            assert not await stores.tasks.stage(Lease(stale.task, "not-the-lease"), ["c.png"])
            await asyncio.sleep(0.4)
            [expired] = await stores.tasks.expired(10)
            assert expired.staged_keys == ("a.png", "b.png")
            assert await stores.tasks.reap(expired, tasks.recover_interrupted(expired.task, max_attempts=3))
            again = await stores.tasks.claim("healthy", 30)
            assert again is not None and again.task.id == lost.id
            assert not await stores.tasks.stage(stale, ["late.png"])  # the old run is fenced out
            # A run that settles leaves nothing staged: were its lease to expire later, there is nothing to delete.
            assert await stores.tasks.stage(again, ["d.png"])
            assert await stores.tasks.settle(again, tasks.complete(again.task, ["d.png"], "torch"))
            other = await stores.tasks.claim("healthy", 0.2)
            assert other is not None and other.task.id == kept.id
            await asyncio.sleep(0.4)
            [unstaged] = await stores.tasks.expired(10)
            assert unstaged.task.id == kept.id and unstaged.staged_keys == ()

    run(scenario)


def test_a_renewal_that_wins_the_race_keeps_its_task(open_stores):
    async def scenario() -> None:
        async with opened(open_stores) as stores:
            assert await stores.tasks.add(new_task(), None, 10)
            lease = await stores.tasks.claim("slow", 0.2)
            assert lease is not None
            await asyncio.sleep(0.4)
            [expired] = await stores.tasks.expired(10)
            assert await stores.tasks.renew(lease, 30)  # the worker renews before the reaper writes
            assert not await stores.tasks.reap(expired, tasks.recover_interrupted(expired.task, 3))
            assert await stores.tasks.settle(lease, tasks.complete(lease.task, ["k.png"], "torch"))

    run(scenario)


def test_delivery_claims_are_exclusive_leased_and_fenced(open_stores):
    async def scenario() -> None:
        async with opened(open_stores) as a, opened(open_stores) as b:
            task = new_task(callback_url="https://receiver.example/hook")
            assert await a.tasks.add(task, None, 10)
            lease = await a.tasks.claim("w", 30)
            assert lease is not None
            delivery = new_delivery(task.id, "https://receiver.example/hook", time.time() - 1)
            assert await a.tasks.settle(lease, tasks.fail(lease.task, "x"), delivery)
            assert await a.outbox.next_due_at() == pytest.approx(delivery.next_attempt_at)
            [claim] = await a.outbox.claim_due(time.time(), 10, 0.3)
            assert claim.delivery == delivery
            assert await b.outbox.claim_due(time.time(), 10, 30) == []  # one attempt in flight at a time
            await asyncio.sleep(0.5)  # node a died mid-POST: its claim runs out
            [taken_over] = await b.outbox.claim_due(time.time(), 10, 30)
            assert taken_over.delivery.id == delivery.id  # the same webhook-id on the other node
            failed_once = after_attempt(
                delivery,
                delivered=False,
                retryable=True,
                error="HTTP 500",
                now=time.time(),
                max_attempts=5,
                backoff_base=30,
            )
            assert not await a.outbox.record(claim, failed_once)  # the late node's record is refused
            assert await b.outbox.record(taken_over, failed_once)
            stored = await b.outbox.for_task(task.id)
            assert stored is not None and stored.attempts == 1 and stored.status is DeliveryStatus.PENDING
            assert await b.outbox.claim_due(time.time(), 10, 30) == []  # not due until its backoff ends

    run(scenario)


def test_the_node_registry_lists_live_nodes_only(open_stores):
    async def scenario() -> None:
        async with opened(open_stores) as stores:
            node = NodeInfo(
                id="gpu-box-1",
                role=Role.WORKER,
                host="gpu-box",
                pid=7,
                started_at="2026-11-24T00:00:00Z",
                storage="minio",
                data_dir="/data",
                device="cuda:1",
                model_loaded=True,
            )
            await stores.nodes.beat(node)
            [live] = await stores.nodes.live(5)
            assert live.id == "gpu-box-1" and live.device == "cuda:1" and live.heartbeat_at > 0
            await asyncio.sleep(0.3)
            assert await stores.nodes.live(0.2) == []  # its heartbeat stopped: it drops out
            await stores.nodes.beat(msgspec.structs.replace(node, current_task="t-1"))
            [again] = await stores.nodes.live(5)
            assert again.current_task == "t-1"
            await stores.nodes.leave(node.id)
            assert await stores.nodes.live(5) == []

    run(scenario)


def test_unknown_tasks_are_not_found(open_stores):
    async def scenario() -> None:
        async with opened(open_stores) as stores:
            with pytest.raises(TaskNotFound):
                await stores.tasks.get("no-such-task")
            with pytest.raises(TaskNotFound):
                await stores.init_images.get("no-such-task")

    run(scenario)


def _leave_a_newer_schema(stores: Stores, tmp_path: Path) -> None:
    """What a newer sdapi would leave behind: schema version 99."""
    database = stores.database
    if hasattr(database, "dsn"):
        with psycopg.connect(database.dsn, autocommit=True) as connection:
            connection.execute("INSERT INTO schema_migrations (version) VALUES (99)")
    else:
        with contextlib.closing(sqlite3.connect(tmp_path / "tasks.sqlite3")) as connection:
            connection.execute("PRAGMA user_version = 99")  # (sqlite3's own `with` would not close it)


def test_a_schema_newer_than_this_sdapi_is_refused(open_sql_stores, tmp_path):
    open_stores = open_sql_stores

    async def scenario() -> None:
        async with opened(open_stores) as stores:
            _leave_a_newer_schema(stores, tmp_path)
        with pytest.raises(TaskStoreError, match="version 99, newer than this sdapi knows"):
            async with opened(open_stores):
                pass

    run(scenario)


def test_a_refused_open_closes_what_it_opened(open_sql_stores, tmp_path):
    """A store whose open() fails (here: a schema from a newer sdapi) leaves no connection or file open behind."""

    async def scenario() -> None:
        async with opened(open_sql_stores) as stores:
            database = stores.database
            _leave_a_newer_schema(stores, tmp_path)
        refused = open_sql_stores()
        with pytest.raises(TaskStoreError, match="newer than this sdapi knows"):
            await asyncio.wait_for(refused.database.open(), timeout=60)
        if hasattr(database, "dsn"):
            others = (
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            deadline = time.monotonic() + 30
            with psycopg.connect(database.dsn, autocommit=True) as connection:
                while (row := connection.execute(others).fetchone()) is not None and row[0] > 0:
                    assert time.monotonic() < deadline, f"{row[0]} connection(s) left open"
                    await asyncio.sleep(0.1)
        else:
            opened_files = {Path(item.path) for item in psutil.Process().open_files()}
            assert (tmp_path / "tasks.sqlite3") not in opened_files
        await asyncio.wait_for(refused.database.close(), timeout=30)  # closing again is harmless

    run(scenario)


def test_nodes_starting_together_migrate_once(open_sql_stores):
    open_stores = open_sql_stores

    async def scenario() -> None:
        nodes = [open_stores() for _ in range(6)]
        await asyncio.gather(*(node.database.open() for node in nodes))
        try:
            assert await nodes[0].tasks.add(new_task(), None, 10)
            assert await nodes[5].tasks.claim("w", 30) is not None
        finally:
            await asyncio.gather(*(node.database.close() for node in nodes))

    run(scenario)


def test_a_sqlite_file_from_before_leases_upgrades_and_its_interrupted_task_is_reaped(tmp_path):
    path = tmp_path / "old.sqlite3"
    interrupted = tasks.start(new_task())
    with sqlite3.connect(path) as connection:  # the schema before versioning, as the first release wrote it
        connection.executescript(
            "CREATE TABLE tasks (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, status TEXT NOT NULL,"
            " body BLOB NOT NULL, init_image BLOB);"
            "CREATE TABLE deliveries (id TEXT PRIMARY KEY, task_id TEXT NOT NULL UNIQUE, status TEXT NOT NULL,"
            " next_attempt_at REAL NOT NULL, body BLOB NOT NULL);"
        )
        connection.execute(
            "INSERT INTO tasks (id, status, body) VALUES (?, ?, ?)",
            (interrupted.id, "processing", msgspec.json.encode(interrupted)),
        )

    async def scenario() -> None:
        async with opened(lambda: open_sqlite(path)) as stores:
            stored = await stores.tasks.get(interrupted.id)
            assert stored.attempts == 1
            assert abs((stored.updated_at - interrupted.updated_at).total_seconds()) < 0.001
            [expired] = await stores.tasks.expired(10)  # no lease: the restart recovery of before
            assert await stores.tasks.reap(expired, tasks.recover_interrupted(expired.task, 3))
            assert (await stores.tasks.get(interrupted.id)).status is TaskStatus.PENDING

    run(scenario)


def test_progress_reports_carry_cancel_requests_to_the_lease_holder(open_stores):
    async def scenario() -> None:
        async with opened(open_stores) as worker_node, opened(open_stores) as api_node:
            task = new_task()
            assert await api_node.tasks.add(task, None, 10)
            assert not await api_node.tasks.request_cancel(task.id)  # pending: nothing runs to be stopped
            lease = await worker_node.tasks.claim("w", 30)
            assert lease is not None and lease.task.started_at is not None and lease.task.progress is None
            progress = Progress(step=3, total_steps=10, images_done=0, num_images=1)
            assert await worker_node.tasks.report_progress(lease, progress) == RunRequests()
            assert (await api_node.tasks.get(task.id)).progress == progress
            # A1111's skip: counted, so two skips between reports are two.
            assert await api_node.tasks.request_skip(task.id) and await api_node.tasks.request_skip(task.id)
            assert await worker_node.tasks.report_progress(lease, progress) == RunRequests(skips=2)
            assert await api_node.tasks.request_cancel(task.id)
            # The worker learns of it.
            assert await worker_node.tasks.report_progress(lease, progress) == RunRequests(cancel=True, skips=2)
            stale = await worker_node.tasks.report_progress(Lease(lease.task, "stale"), progress)
            assert stale == RunRequests()  # only the holder
            assert await worker_node.tasks.settle(lease, tasks.cancel(lease.task))
            assert not await api_node.tasks.request_cancel(task.id)  # ended
            assert not await api_node.tasks.request_skip(task.id)

    run(scenario)


def test_a_pending_task_is_cancelled_once_with_its_delivery(open_stores):
    async def scenario() -> None:
        async with opened(open_stores) as stores:
            task = new_task(callback_url="https://receiver.example/hook")
            assert await stores.tasks.add(task, b"init", 10)
            cancelled = tasks.cancel(task)
            delivery = new_delivery(task.id, "https://receiver.example/hook", time.time())
            assert await stores.tasks.cancel_pending(task, cancelled, delivery)
            assert not await stores.tasks.cancel_pending(task, cancelled, delivery)  # no longer pending
            record = await stores.tasks.read(task.id)
            stored, stored_delivery = record.task, record.delivery
            assert stored.status is TaskStatus.FAILED and stored.error_code == "cancelled"
            assert stored_delivery == delivery
            assert await stores.init_images.get(task.id) is None
            assert await stores.tasks.claim("w", 30) is None  # nothing left to run

    run(scenario)


def test_an_idempotency_key_admits_once_across_nodes_and_expires(open_stores):
    async def scenario() -> None:
        async with opened(open_stores) as a, opened(open_stores) as b:
            key = IdempotencyKey(owner="alice", key="k-1", fingerprint="f1", ttl_seconds=0.5)
            candidates = [new_task() for _ in range(6)]
            results = await asyncio.gather(
                *((a if n % 2 else b).tasks.add_once(task, None, 100, None, key) for n, task in enumerate(candidates))
            )
            admitted = [task for task, result in zip(candidates, results, strict=True) if result.admitted]
            assert len(admitted) == 1
            assert {result.existing_task_id for result in results if not result.admitted} == {admitted[0].id}
            other = await a.tasks.add_once(new_task(), None, 100, None, IdempotencyKey("alice", "k-1", "f2", 0.5))
            assert not other.admitted and not other.same_request
            assert (await a.tasks.add_once(new_task(), None, 100, None, IdempotencyKey("bob", "k-1", "f1", 9))).admitted
            await asyncio.sleep(0.7)
            assert (await b.tasks.add_once(new_task(), None, 100, None, key)).admitted  # expired: a new request

    run(scenario)


def test_the_sweep_deletes_old_finished_tasks_only(open_stores):
    async def scenario() -> None:
        async with opened(open_stores) as stores:
            old, running = new_task(callback_url="https://r.example/h"), new_task()
            assert await stores.tasks.add(old, None, 10) and await stores.tasks.add(running, None, 10)
            lease = await stores.tasks.claim("w", 30)
            assert lease is not None
            delivery = new_delivery(old.id, "https://r.example/h", time.time())
            assert await stores.tasks.settle(lease, tasks.complete(lease.task, ["k.png"], "torch"), delivery)
            assert await stores.tasks.claim("w", 30) is not None  # the other one is processing
            assert await stores.tasks.sweep(60, 10) == []  # not old enough
            await asyncio.sleep(0.3)
            [swept] = await stores.tasks.sweep(0.2, 10)
            assert swept.id == old.id and swept.result_keys == ("k.png",)
            with pytest.raises(TaskNotFound):
                await stores.tasks.get(old.id)
            assert await stores.outbox.for_task(old.id) is None
            assert (await stores.tasks.get(running.id)).status is TaskStatus.PROCESSING

    run(scenario)


def test_listing_reads_and_queue_places_per_owner(open_stores):
    async def scenario() -> None:
        async with opened(open_stores) as stores:
            alice = [msgspec.structs.replace(new_task(num_inference_steps=10), owner="alice") for _ in range(3)]
            bob = msgspec.structs.replace(new_task(num_inference_steps=20), owner="bob")
            for task in (alice[0], bob, alice[1], alice[2]):
                assert await stores.tasks.add(task, None, 10, owner_max_pending=3)
            refused = msgspec.structs.replace(new_task(), owner="alice")
            assert not await stores.tasks.add(refused, None, 10, owner_max_pending=3)  # alice has 3 pending
            assert await stores.tasks.count(TaskStatus.PENDING, "alice") == 3
            newest_first = await stores.tasks.list_tasks(None, None, None, 10)
            assert [record.task.id for record in newest_first] == [alice[2].id, alice[1].id, bob.id, alice[0].id]
            page = await stores.tasks.list_tasks("alice", None, None, 2)
            assert [record.task.id for record in page] == [alice[2].id, alice[1].id]
            rest = await stores.tasks.list_tasks("alice", None, page[-1].seq, 2)
            assert [record.task.id for record in rest] == [alice[0].id]
            record = await stores.tasks.read(alice[1].id)
            assert record.queue_position == 2 and record.delivery is None
            assert record.work_ahead == pytest.approx(alice[0].params.work + bob.params.work)
            lease = await stores.tasks.claim("w", 30)  # alice[0] runs: it counts half
            assert lease is not None
            record = await stores.tasks.read(alice[1].id)
            assert record.queue_position == 1
            assert record.work_ahead == pytest.approx(bob.params.work + alice[0].params.work / 2)
            running = await stores.tasks.read(alice[0].id)
            assert running.queue_position is None and running.work_ahead is None
            assert [r.task.id for r in await stores.tasks.list_tasks(None, TaskStatus.PROCESSING, None, 10)] == [
                alice[0].id
            ]
            await stores.throughput.record("torch", 2.0)
            await stores.throughput.record("torch", 4.0)
            assert (await stores.throughput.rates())["torch"] == pytest.approx(2.0 * 0.7 + 4.0 * 0.3)

    run(scenario)
