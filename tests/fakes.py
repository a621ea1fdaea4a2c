"""In-memory fakes of the store, the image storage and the engine, for unit tests of the service layer.

They go through the same composition root as the real parts (build_runtime(..., stores=, storage=, engine=)), so a
unit test runs the real Worker, TaskService and CallbackSender at memory speed, with failures injected at will.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Sequence

import msgspec
from PIL import Image

from sdapi.core import tasks
from sdapi.core.batching import batch_key, choose_companions
from sdapi.core.claims import Queued, claim_order
from sdapi.core.deliveries import Delivery, DeliveryStatus
from sdapi.core.nodes import NodeInfo
from sdapi.core.params import GenerationParams
from sdapi.core.tasks import Progress, Task, TaskStatus
from sdapi.engines import EngineDescription, Run, RunFacts, RunResult, one_at_a_time
from sdapi.errors import TaskNotFound, TaskStoreError
from sdapi.previews import Preview
from sdapi.store import (
    Admission,
    DeliveryClaim,
    IdempotencyKey,
    Lease,
    NoChangeFeed,
    RunRequests,
    Stores,
    TaskRecord,
)


class MemoryDatabase:
    """The tables, shared by the fakes; `outage` makes every call fail as a broken database would."""

    def __init__(self) -> None:
        self.tasks: dict[str, Task] = {}
        self.init_images: dict[str, bytes | None] = {}
        self.deliveries: dict[str, Delivery] = {}
        # task id -> (lease token, expiry); delivery id -> (claim token, expiry)
        self.leases: dict[str, tuple[str, float]] = {}
        self.claims: dict[str, tuple[str, float]] = {}
        self.nodes: dict[str, NodeInfo] = {}
        self.cancel_requests: set[str] = set()
        self.skip_requests: dict[str, int] = {}
        # task id -> the keys its current run staged
        self.staged: dict[str, tuple[str, ...]] = {}
        # (owner, key) -> (task id, fingerprint, expiry)
        self.idempotency: dict[tuple[str, str], tuple[str, str, float]] = {}
        self.outage = False
        self.closed = False
        self.calls = 0

    def touch(self) -> None:
        self.calls += 1
        if self.outage:
            raise TaskStoreError("任务数据库错误：disk I/O error (fake outage)")

    async def open(self) -> None:
        self.touch()

    async def close(self) -> None:
        self.closed = True


class MemoryTaskStore:
    def __init__(self, database: MemoryDatabase) -> None:
        self.db = database
        # Terminal writes to fail before one succeeds, and an event that holds terminal writes until set.
        self.failing_terminal_writes = 0
        self.failing_stages = 0  # stagings of image keys to fail before one succeeds
        self.failing_companion_claims = 0  # companion claims to fail before one succeeds
        self.terminal_write_gate: asyncio.Event | None = None

    async def add(
        self, task: Task, init_image: bytes | None, max_pending: int, owner_max_pending: int | None = None
    ) -> bool:
        self.db.touch()
        pending = [t for t in self.db.tasks.values() if t.status is TaskStatus.PENDING]
        if len(pending) >= max_pending:
            return False
        if owner_max_pending is not None and sum(t.owner == task.owner for t in pending) >= owner_max_pending:
            return False
        self.db.tasks[task.id] = task
        self.db.init_images[task.id] = init_image
        return True

    async def add_once(
        self,
        task: Task,
        init_image: bytes | None,
        max_pending: int,
        owner_max_pending: int | None,
        idempotency: IdempotencyKey,
    ) -> Admission:
        known = self.db.idempotency.get((idempotency.owner, idempotency.key))
        if known is not None and known[2] < time.time():  # expired: the key is free again
            known = None
        if known is not None:
            return Admission(False, existing_task_id=known[0], same_request=known[1] == idempotency.fingerprint)
        if not await self.add(task, init_image, max_pending, owner_max_pending):
            return Admission(False)
        expires = time.time() + idempotency.ttl_seconds
        self.db.idempotency[(idempotency.owner, idempotency.key)] = (task.id, idempotency.fingerprint, expires)
        return Admission(True)

    async def get(self, task_id: str) -> Task:
        self.db.touch()
        if task_id not in self.db.tasks:
            raise TaskNotFound("任务不存在")
        return self.db.tasks[task_id]

    def _record(self, task: Task) -> TaskRecord:
        order = list(self.db.tasks)
        seq = order.index(task.id) + 1
        ahead = [t for t in self.db.tasks.values() if t.status is TaskStatus.PENDING and order.index(t.id) + 1 < seq]
        pending = task.status is TaskStatus.PENDING
        # As the SQL stores: running tasks count half their work (on average they are half done).
        running = sum(t.params.work for t in self.db.tasks.values() if t.status is TaskStatus.PROCESSING) / 2
        return TaskRecord(
            task=task,
            delivery=next((d for d in self.db.deliveries.values() if d.task_id == task.id), None),
            seq=seq,
            queue_position=len(ahead) if pending else None,
            work_ahead=sum(t.params.work for t in ahead) + running if pending else None,
        )

    async def read(self, task_id: str) -> TaskRecord:
        return self._record(await self.get(task_id))

    async def list_tasks(
        self, owner: str | None, status: TaskStatus | None, before_seq: int | None, limit: int
    ) -> list[TaskRecord]:
        self.db.touch()
        records = [self._record(task) for task in self.db.tasks.values()]
        chosen = [
            record
            for record in reversed(records)
            if (owner is None or record.task.owner == owner)
            and (status is None or record.task.status is status)
            and (before_seq is None or record.seq < before_seq)
        ]
        return chosen[:limit]

    async def states(self, task_ids: list[str]) -> dict[str, str]:
        self.db.touch()
        return {task_id: repr(self.db.tasks[task_id]) for task_id in task_ids if task_id in self.db.tasks}

    async def count(self, status: TaskStatus, owner: str | None = None) -> int:
        self.db.touch()
        return sum(t.status is status and (owner is None or t.owner == owner) for t in self.db.tasks.values())

    async def claim(
        self,
        worker_id: str,
        lease_seconds: float,
        loaded: Sequence[str] = (),
        affinity_max_wait: float = 0.0,
        skip: Sequence[str] = (),
    ) -> Lease | None:
        self.db.touch()
        queued = [
            Queued(t.id, t.params.model, t.created_at.timestamp())
            for t in self.db.tasks.values()
            if t.status is TaskStatus.PENDING
        ]
        order = claim_order(queued, loaded, affinity_max_wait, skip, time.time())
        if not order:
            return None
        pending = self.db.tasks[order[0]]
        started = tasks.start(pending)
        self.db.tasks[started.id] = started
        token = uuid.uuid4().hex
        self.db.leases[started.id] = (token, time.time() + lease_seconds)
        return Lease(started, token)

    async def claim_companions(self, worker_id: str, lease_seconds: float, first: Task, room: int) -> list[Lease]:
        self.db.touch()
        if self.failing_companion_claims > 0:
            self.failing_companion_claims -= 1
            raise TaskStoreError("任务数据库错误：database is locked (fake)")
        key = batch_key(first.params)
        if key is None:
            return []
        candidates = [
            (task.id, task.params.num_images)
            for task in self.db.tasks.values()
            if task.status is TaskStatus.PENDING and batch_key(task.params) == key
        ]
        leases: list[Lease] = []
        for task_id in choose_companions(candidates, room):
            started = tasks.start(self.db.tasks[task_id])
            self.db.tasks[started.id] = started
            token = uuid.uuid4().hex
            self.db.leases[started.id] = (token, time.time() + lease_seconds)
            leases.append(Lease(started, token))
        return leases

    async def renew(self, lease: Lease, lease_seconds: float) -> bool:
        self.db.touch()
        if not self._holds(lease):
            return False
        self.db.leases[lease.task.id] = (lease.token, time.time() + lease_seconds)
        return True

    def _holds(self, lease: Lease) -> bool:
        current = self.db.leases.get(lease.task.id)
        stored = self.db.tasks.get(lease.task.id)
        return (
            current is not None
            and current[0] == lease.token
            and stored is not None
            and stored.status is TaskStatus.PROCESSING
        )

    async def settle(self, lease: Lease, task: Task, delivery: Delivery | None = None) -> bool:
        self.db.touch()
        if task.status.is_terminal:
            if self.terminal_write_gate is not None:
                await self.terminal_write_gate.wait()
            if self.failing_terminal_writes > 0:
                self.failing_terminal_writes -= 1
                raise TaskStoreError("任务数据库错误：database is locked (fake)")
        return self._write(lease, task, delivery)

    def _write(self, lease: Lease, task: Task, delivery: Delivery | None) -> bool:
        if not self._holds(lease):
            return False
        self.db.tasks[task.id] = task
        del self.db.leases[task.id]
        self.db.staged.pop(task.id, None)
        if task.status.is_terminal:
            self.db.init_images[task.id] = None
        if delivery is not None:
            self.db.deliveries[delivery.id] = delivery
        return True

    async def stage(self, lease: Lease, keys: Sequence[str]) -> bool:
        self.db.touch()
        if self.failing_stages > 0:
            self.failing_stages -= 1
            raise TaskStoreError("任务数据库错误：database is locked (fake)")
        if not self._holds(lease):
            return False
        self.db.staged[lease.task.id] = tuple(keys)
        return True

    async def report_progress(self, lease: Lease, progress: Progress) -> RunRequests:
        self.db.touch()
        if not self._holds(lease):
            return RunRequests()
        self.db.tasks[lease.task.id] = msgspec.structs.replace(self.db.tasks[lease.task.id], progress=progress)
        return RunRequests(
            cancel=lease.task.id in self.db.cancel_requests, skips=self.db.skip_requests.get(lease.task.id, 0)
        )

    async def cancel_pending(self, task: Task, cancelled: Task, delivery: Delivery | None) -> bool:
        self.db.touch()
        if self.db.tasks[task.id].status is not TaskStatus.PENDING:
            return False
        self.db.tasks[task.id] = cancelled
        self.db.init_images[task.id] = None
        if delivery is not None:
            self.db.deliveries[delivery.id] = delivery
        return True

    async def request_skip(self, task_id: str) -> bool:
        self.db.touch()
        if self.db.tasks[task_id].status is not TaskStatus.PROCESSING:
            return False
        self.db.skip_requests[task_id] = self.db.skip_requests.get(task_id, 0) + 1
        return True

    async def request_cancel(self, task_id: str) -> bool:
        self.db.touch()
        if self.db.tasks[task_id].status is not TaskStatus.PROCESSING:
            return False
        self.db.cancel_requests.add(task_id)
        return True

    async def sweep(self, older_than_seconds: float, limit: int) -> list[Task]:
        self.db.touch()
        cutoff = time.time() - older_than_seconds
        old = [t for t in self.db.tasks.values() if t.status.is_terminal and t.updated_at.timestamp() < cutoff][:limit]
        for task in old:
            del self.db.tasks[task.id]
            for delivery in [d for d in self.db.deliveries.values() if d.task_id == task.id]:
                del self.db.deliveries[delivery.id]
        return old

    async def expired(self, limit: int) -> list[Lease]:
        self.db.touch()
        now = time.time()
        return [
            Lease(self.db.tasks[task_id], token, self.db.staged.get(task_id, ()))
            for task_id, (token, expires) in self.db.leases.items()
            if expires < now
        ][:limit]

    async def reap(self, lease: Lease, task: Task, delivery: Delivery | None = None) -> bool:
        self.db.touch()
        current = self.db.leases.get(lease.task.id)
        if current is None or current[1] >= time.time():
            return False
        return self._write(lease, task, delivery)


class MemoryOutbox:
    def __init__(self, database: MemoryDatabase) -> None:
        self.db = database
        self.failing_records = 0  # records of a delivery's new state to fail before one succeeds

    async def for_task(self, task_id: str) -> Delivery | None:
        self.db.touch()
        return next((d for d in self.db.deliveries.values() if d.task_id == task_id), None)

    async def redeliver(self, previous: Delivery, delivery: Delivery) -> bool:
        self.db.touch()
        stored = self.db.deliveries.get(previous.id)
        if stored is None or stored.status is DeliveryStatus.PENDING:
            return False
        del self.db.deliveries[previous.id]
        self.db.deliveries[delivery.id] = delivery
        return True

    async def claim_due(self, now: float, limit: int, lease_seconds: float) -> list[DeliveryClaim]:
        self.db.touch()
        clock = time.time()
        due = sorted(
            (
                d
                for d in self.db.deliveries.values()
                if d.status is DeliveryStatus.PENDING
                and d.next_attempt_at <= now
                and self.db.claims.get(d.id, ("", 0.0))[1] < clock
            ),
            key=lambda d: d.next_attempt_at,
        )[:limit]
        token = uuid.uuid4().hex
        for delivery in due:
            self.db.claims[delivery.id] = (token, clock + lease_seconds)
        return [DeliveryClaim(delivery, token) for delivery in due]

    async def record(self, claim: DeliveryClaim, delivery: Delivery) -> bool:
        self.db.touch()
        if self.failing_records > 0:
            self.failing_records -= 1
            raise TaskStoreError("任务数据库错误：database is locked (fake)")
        if self.db.claims.get(delivery.id, ("", 0.0))[0] != claim.token:
            return False
        del self.db.claims[delivery.id]
        self.db.deliveries[delivery.id] = delivery
        return True

    async def next_due_at(self) -> float | None:
        self.db.touch()
        times = [d.next_attempt_at for d in self.db.deliveries.values() if d.status is DeliveryStatus.PENDING]
        return min(times) if times else None


class MemoryInitImages:
    def __init__(self, database: MemoryDatabase) -> None:
        self.db = database

    async def get(self, task_id: str) -> bytes | None:
        self.db.touch()
        if task_id not in self.db.tasks:
            raise TaskNotFound("任务不存在")
        return self.db.init_images.get(task_id)


class MemoryThroughput:
    def __init__(self, database: MemoryDatabase) -> None:
        self.db = database
        self.measured: dict[str, float] = {}

    async def record(self, engine: str, seconds_per_work: float) -> None:
        self.db.touch()
        # The same moving average as the SQL stores (newest measurement weighs 0.3).
        previous = self.measured.get(engine)
        self.measured[engine] = seconds_per_work if previous is None else previous * 0.7 + seconds_per_work * 0.3

    async def rates(self) -> dict[str, float]:
        self.db.touch()
        return dict(self.measured)


class MemoryPreviews:
    def __init__(self, database: MemoryDatabase) -> None:
        self.db = database
        self.previews: dict[str, tuple[Preview, float]] = {}

    async def put(self, task_id: str, preview: Preview, keep_seconds: float) -> None:
        self.db.touch()
        now = time.time()
        self.previews = {key: kept for key, kept in self.previews.items() if kept[1] >= now - keep_seconds}
        self.previews[task_id] = (preview, now)

    async def get(self, task_id: str, keep_seconds: float) -> Preview | None:
        self.db.touch()
        kept = self.previews.get(task_id)
        return kept[0] if kept is not None and kept[1] >= time.time() - keep_seconds else None

    async def delete(self, task_id: str) -> None:
        self.db.touch()
        self.previews.pop(task_id, None)


class MemoryNodes:
    def __init__(self, database: MemoryDatabase) -> None:
        self.db = database

    async def beat(self, node: NodeInfo) -> None:
        self.db.touch()
        self.db.nodes[node.id] = msgspec.structs.replace(node, heartbeat_at=time.time())

    async def live(self, within_seconds: float) -> list[NodeInfo]:
        self.db.touch()
        return [node for node in self.db.nodes.values() if node.heartbeat_at >= time.time() - within_seconds]

    async def leave(self, node_id: str) -> None:
        self.db.touch()
        self.db.nodes.pop(node_id, None)


def memory_stores(database: MemoryDatabase | None = None) -> tuple[Stores, MemoryTaskStore, MemoryDatabase]:
    """The stores of one node over `database` (a new one by default): another call on the same database is another
    node, as the store contract suite uses them."""
    database = database or MemoryDatabase()
    tasks = MemoryTaskStore(database)
    stores = Stores(
        tasks=tasks,
        outbox=MemoryOutbox(database),
        init_images=MemoryInitImages(database),
        nodes=MemoryNodes(database),
        throughput=MemoryThroughput(database),
        previews=MemoryPreviews(database),
        feed=NoChangeFeed(),
        database=database,
    )
    return stores, tasks, database


class MemoryStorage:
    """ImageStorage in a dict."""

    name = "memory"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self._keys = itertools.count()

    def prepare(self) -> None:
        pass

    def new_key(self, extension: str) -> str:
        return f"image-{next(self._keys)}.{extension}"

    def save(self, key: str, data: bytes, content_type: str) -> None:
        self.objects[key] = data

    def read(self, key: str) -> bytes:
        return self.objects[key]

    def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.objects.pop(key, None)

    def url(self, key: str, base_url: str | None) -> str:
        return f"memory://{key}"

    def local_path(self, key: str) -> None:
        return None

    def check(self) -> str:
        return "ok"


class FakeEngine:
    """Solid-grey images of the asked size, instantly; counts its runs."""

    name = "fake"

    def __init__(self) -> None:
        self.runs = 0
        self.batches: list[int] = []  # the members of each generate_batch call

    @property
    def loaded(self) -> bool:
        return True

    def load(self) -> None:
        pass

    def adapter_shapes(self) -> dict[str, tuple[int, ...]]:
        return {}

    def describe(self) -> EngineDescription:
        return EngineDescription(device="none", dtype="none")

    def check(self, params: GenerationParams) -> None:
        pass

    def generate(self, run: Run) -> RunResult:
        self.runs += 1
        if run.on_step is not None:
            run.on_step(1, 1, 0)
        params = run.params
        images = [Image.new("RGB", (params.width, params.height), (seed % 256,) * 3) for seed in params.image_seeds()]
        return RunResult(images, RunFacts(engine=self.name, dtype="none", device="none"))

    def generate_batch(self, runs: list[Run]) -> list[RunResult | None]:
        self.batches.append(len(runs))
        return one_at_a_time(self, runs)
