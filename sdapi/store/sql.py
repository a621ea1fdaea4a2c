"""The stores' SQL, once for both databases: SQLite and PostgreSQL differ only in what a `Dialect` says (the clock
expression, row locking, how admission is serialised, notifications) and in how a `Session` runs a statement.

Tables (created by each backend's migrations; sqlite.py and postgres.py hold the exact columns):
- tasks: seq (queue order), id, status, attempts, updated_at, body (the Task as JSON), init_image, the lease
  (lease_token, lease_expires_at, worker_id), and what claims and admission read without decoding the body: owner,
  cost, model, batch_key, submitted_at, started_at, progress, cancel_requested, staged image keys. status, attempts and
  updated_at are columns because a claim changes them in one statement; they are authoritative and laid over the
  body when a task is read.
- deliveries: id (the webhook-id), task_id, status, next_attempt_at, body (the Delivery as JSON), and a claim
  lease: lease_token, lease_expires_at.
- nodes: id, role, heartbeat_at, body (the NodeInfo as JSON).
- idempotency: (owner, key) -> the task it created, the request's fingerprint, when it expires.
- throughput: per engine, the moving average of seconds per unit of work (the queue's start estimates).
- previews: the latest live preview of each running task (step, size, mime, image bytes, posted_at).
Times are unix seconds (float); the `now` of leases, heartbeats and updated_at is the database's clock.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec

from sdapi.core.batching import batch_key, choose_companions
from sdapi.core.deliveries import Delivery, DeliveryStatus
from sdapi.core.nodes import NodeInfo
from sdapi.core.tasks import Progress, Task, TaskStatus
from sdapi.errors import TASK_NOT_FOUND_MESSAGE, TaskNotFound
from sdapi.previews import Preview
from sdapi.store import NO_REQUESTS, Admission, DeliveryClaim, IdempotencyKey, Lease, RunRequests, TaskRecord

_encoder = msgspec.json.Encoder()
_task_decoder = msgspec.json.Decoder(Task)
_delivery_decoder = msgspec.json.Decoder(Delivery)
_node_decoder = msgspec.json.Decoder(NodeInfo)
_progress_decoder = msgspec.json.Decoder(Progress)

Row = tuple[Any, ...]


@dataclass(frozen=True)
class Dialect:
    """What differs between the databases, as SQL fragments."""

    # An expression: the database clock in unix seconds.
    now: str
    # Appended to the SELECT that picks rows to claim: other claimers skip locked rows instead of waiting.
    skip_locked: str
    # Run first in the admission transaction so that no two admissions interleave across nodes, or None when a
    # write transaction is exclusive anyway (SQLite's BEGIN IMMEDIATE).
    admission_lock: str | None
    # A query answering one row with true when this transaction may sweep (no other node is sweeping), or None when
    # write transactions are exclusive anyway.
    sweep_lock: str | None
    # Statements that wake other processes after a task becomes pending / a delivery is recorded / a running task is
    # asked to cancel, or None.
    notify_task: str | None
    notify_delivery: str | None
    notify_cancel: str | None


class Session(Protocol):
    """One connection for the length of a `with`; statements use %s placeholders."""

    async def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run a statement; return the number of rows it changed."""

    async def fetchone(self, sql: str, params: Sequence[object] = ()) -> Row | None: ...

    async def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[Row]: ...


class SqlDatabase(Protocol):
    dialect: Dialect

    def session(self, *, write: bool) -> AbstractAsyncContextManager[Session]:
        """A session; `write=True` makes it one transaction (committed at the end, rolled back on error).
        Driver errors leave it as TaskStoreError."""


# How many pending tasks of a batch key a companion claim looks at: as many as the largest batch can take.
COMPANION_CANDIDATES = 64

_TASK_COLUMNS = "body, status, attempts, updated_at, progress, started_at"


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _task(row: Row) -> Task:
    """A task from (body, status, attempts, updated_at, progress, started_at): the columns a claim or a progress
    report changes win over the body."""
    task = _task_decoder.decode(bytes(row[0]))
    return msgspec.structs.replace(
        task,
        status=TaskStatus(row[1]),
        attempts=int(row[2]),
        updated_at=datetime.fromtimestamp(row[3], UTC),
        progress=None if row[4] is None else _progress_decoder.decode(bytes(row[4])),
        started_at=_time(row[5]),
    )


def _lease(row: Row) -> Lease:
    """A lease from (the task columns, lease_token)."""
    return Lease(task=_task(row), token=row[6] or "")


# A task with its delivery and, while pending, what is ahead of it in the queue (running tasks count half their
# work: on average they are half done).
_RECORD_SELECT = (
    "SELECT t.body, t.status, t.attempts, t.updated_at, t.progress, t.started_at, d.body, t.seq, "
    "CASE WHEN t.status = 'pending' THEN "
    "(SELECT COUNT(*) FROM tasks p WHERE p.status = 'pending' AND p.seq < t.seq) END, "
    "CASE WHEN t.status = 'pending' THEN "
    "(SELECT COALESCE(SUM(p.cost), 0) FROM tasks p WHERE p.status = 'pending' AND p.seq < t.seq) + "
    "(SELECT COALESCE(SUM(r.cost), 0) / 2 FROM tasks r WHERE r.status = 'processing') END "
    "FROM tasks t LEFT JOIN deliveries d ON d.task_id = t.id"
)


def _record(row: Row) -> TaskRecord:
    return TaskRecord(
        task=_task(row),
        delivery=None if row[6] is None else _delivery_decoder.decode(bytes(row[6])),
        seq=int(row[7]),
        queue_position=None if row[8] is None else int(row[8]),
        work_ahead=None if row[9] is None else float(row[9]),
    )


def _encoded_progress(task: Task) -> bytes | None:
    return None if task.progress is None else _encoder.encode(task.progress)


class SqlTaskStore:
    """TaskStore on the `tasks` table."""

    def __init__(self, database: SqlDatabase) -> None:
        self._db = database
        self._dialect = database.dialect

    async def add(
        self, task: Task, init_image: bytes | None, max_pending: int, owner_max_pending: int | None = None
    ) -> bool:
        async with self._db.session(write=True) as session:
            return await self._admit(session, task, init_image, max_pending, owner_max_pending)

    async def add_once(
        self,
        task: Task,
        init_image: bytes | None,
        max_pending: int,
        owner_max_pending: int | None,
        idempotency: IdempotencyKey,
    ) -> Admission:
        now = self._dialect.now
        async with self._db.session(write=True) as session:
            if self._dialect.admission_lock:
                await session.execute(self._dialect.admission_lock)
            row = await session.fetchone(
                f"SELECT task_id, fingerprint FROM idempotency WHERE owner = %s AND key = %s AND expires_at > {now}",
                (idempotency.owner, idempotency.key),
            )
            if row is not None:
                return Admission(False, existing_task_id=str(row[0]), same_request=row[1] == idempotency.fingerprint)
            if not await self._admit(session, task, init_image, max_pending, owner_max_pending, locked=True):
                return Admission(False)
            await session.execute(
                "INSERT INTO idempotency (owner, key, fingerprint, task_id, expires_at) "
                f"VALUES (%s, %s, %s, %s, {now} + %s) ON CONFLICT (owner, key) DO UPDATE SET "
                "fingerprint = excluded.fingerprint, task_id = excluded.task_id, expires_at = excluded.expires_at",
                (idempotency.owner, idempotency.key, idempotency.fingerprint, task.id, idempotency.ttl_seconds),
            )
        return Admission(True)

    async def _admit(
        self,
        session: Session,
        task: Task,
        init_image: bytes | None,
        max_pending: int,
        owner_max_pending: int | None,
        *,
        locked: bool = False,
    ) -> bool:
        """Count and insert inside one serialised transaction: no other admission runs in between."""
        if self._dialect.admission_lock and not locked:
            await session.execute(self._dialect.admission_lock)
        row = await session.fetchone("SELECT COUNT(*) FROM tasks WHERE status = 'pending'")
        if row is not None and int(row[0]) >= max_pending:
            return False
        if owner_max_pending is not None:
            row = await session.fetchone(
                "SELECT COUNT(*) FROM tasks WHERE status = 'pending' AND owner = %s", (task.owner,)
            )
            if row is not None and int(row[0]) >= owner_max_pending:
                return False
        await session.execute(
            "INSERT INTO tasks "
            "(id, status, attempts, updated_at, body, init_image, owner, cost, model, batch_key, submitted_at) "
            f"VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, {self._dialect.now})",
            (
                task.id,
                task.status.value,
                task.attempts,
                task.updated_at.timestamp(),
                _encoder.encode(task),
                init_image,
                task.owner,
                task.params.work,
                task.params.model,
                batch_key(task.params),
            ),
        )
        if self._dialect.notify_task:
            await session.execute(self._dialect.notify_task)
        return True

    async def get(self, task_id: str) -> Task:
        async with self._db.session(write=False) as session:
            row = await session.fetchone(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = %s", (task_id,))
        if row is None:
            raise TaskNotFound(TASK_NOT_FOUND_MESSAGE)
        return _task(row)

    async def read(self, task_id: str) -> TaskRecord:
        async with self._db.session(write=False) as session:
            row = await session.fetchone(f"{_RECORD_SELECT} WHERE t.id = %s", (task_id,))
        if row is None:
            raise TaskNotFound(TASK_NOT_FOUND_MESSAGE)
        return _record(row)

    async def list_tasks(
        self, owner: str | None, status: TaskStatus | None, before_seq: int | None, limit: int
    ) -> list[TaskRecord]:
        conditions, params = [], []
        for condition, value in (
            ("t.owner = %s", owner),
            ("t.status = %s", None if status is None else status.value),
            ("t.seq < %s", before_seq),
        ):
            if value is not None:
                conditions.append(condition)
                params.append(value)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        async with self._db.session(write=False) as session:
            rows = await session.fetchall(f"{_RECORD_SELECT}{where} ORDER BY t.seq DESC LIMIT %s", (*params, limit))
        return [_record(row) for row in rows]

    async def states(self, task_ids: list[str]) -> dict[str, str]:
        if not task_ids:
            return {}
        marks = ", ".join(["%s"] * len(task_ids))
        async with self._db.session(write=False) as session:
            rows = await session.fetchall(
                f"SELECT t.id, t.status, t.updated_at, t.progress, p.step, p.posted_at FROM tasks t "
                f"LEFT JOIN previews p ON p.task_id = t.id WHERE t.id IN ({marks})",
                tuple(task_ids),
            )
        # A new preview (sdapi.previews.board) is a change too: its readers wake for it.
        return {
            str(row[0]): f"{row[1]}|{row[2]}|{'' if row[3] is None else bytes(row[3]).hex()}|{row[4]}|{row[5]}"
            for row in rows
        }

    async def count(self, status: TaskStatus, owner: str | None = None) -> int:
        async with self._db.session(write=False) as session:
            if owner is None:
                row = await session.fetchone("SELECT COUNT(*) FROM tasks WHERE status = %s", (status.value,))
            else:
                row = await session.fetchone(
                    "SELECT COUNT(*) FROM tasks WHERE status = %s AND owner = %s", (status.value, owner)
                )
        return 0 if row is None else int(row[0])

    async def claim(
        self,
        worker_id: str,
        lease_seconds: float,
        loaded: Sequence[str] = (),
        affinity_max_wait: float = 0.0,
        skip: Sequence[str] = (),
    ) -> Lease | None:
        now, token = self._dialect.now, uuid.uuid4().hex
        # sdapi.core.claims.claim_order, in SQL (the contract suite holds the two to the same cases).
        # Tasks from before models were recorded (model NULL) run anywhere: they are never skipped.
        skipping = f" AND (model IS NULL OR model NOT IN ({', '.join(['%s'] * len(skip))}))" if skip else ""
        order = "seq"
        order_params: tuple[object, ...] = ()
        if loaded:
            # First the tasks this worker can run without loading a model (tasks from before models were recorded
            # run anywhere) and the tasks that waited past affinity_max_wait; then the rest; oldest first in each.
            marks = ", ".join(["%s"] * len(loaded))
            order = (
                f"CASE WHEN model IS NULL OR model IN ({marks}) OR COALESCE(submitted_at, 0) < {now} - %s "
                "THEN 0 ELSE 1 END, seq"
            )
            order_params = (*loaded, affinity_max_wait)
        async with self._db.session(write=True) as session:
            row = await session.fetchone(
                f"UPDATE tasks SET status = 'processing', attempts = attempts + 1, skip_requested = 0, "
                f"updated_at = {now}, "
                f"lease_token = %s, lease_expires_at = {now} + %s, worker_id = %s, progress = NULL, "
                f"started_at = {now}, cancel_requested = FALSE "
                f"WHERE seq = (SELECT seq FROM tasks WHERE status = 'pending'{skipping} ORDER BY {order} LIMIT 1"
                f"{self._dialect.skip_locked}) RETURNING {_TASK_COLUMNS}, lease_token",
                (token, lease_seconds, worker_id, *skip, *order_params),
            )
        return None if row is None else _lease(row)

    async def claim_companions(self, worker_id: str, lease_seconds: float, first: Task, room: int) -> list[Lease]:
        key = batch_key(first.params)
        if key is None or room < 1:
            return []
        now, token = self._dialect.now, uuid.uuid4().hex
        async with self._db.session(write=True) as session:
            # In queue order; sdapi.core.batching.choose_companions picks among them.
            rows = await session.fetchall(
                f"SELECT seq, body FROM tasks WHERE status = 'pending' AND batch_key = %s ORDER BY seq LIMIT %s"
                f"{self._dialect.skip_locked}",
                (key, COMPANION_CANDIDATES),
            )
            candidates = [(str(seq), _task_decoder.decode(bytes(body)).params.num_images) for seq, body in rows]
            chosen = [int(seq) for seq in choose_companions(candidates, room)]
            if not chosen:
                return []
            marks = ", ".join(["%s"] * len(chosen))
            # One token for the batch's companions is safe: a lease is the (task id, token) pair.
            rows = await session.fetchall(
                f"UPDATE tasks SET status = 'processing', attempts = attempts + 1, skip_requested = 0, "
                f"updated_at = {now}, "
                f"lease_token = %s, lease_expires_at = {now} + %s, worker_id = %s, progress = NULL, "
                f"started_at = {now}, cancel_requested = FALSE "
                f"WHERE seq IN ({marks}) AND status = 'pending' RETURNING {_TASK_COLUMNS}, lease_token, seq",
                (token, lease_seconds, worker_id, *chosen),
            )
        # In queue order (RETURNING promises none).
        return [_lease(row) for row in sorted(rows, key=lambda row: int(row[7]))]

    async def renew(self, lease: Lease, lease_seconds: float) -> bool:
        async with self._db.session(write=True) as session:
            renewed = await session.execute(
                f"UPDATE tasks SET lease_expires_at = {self._dialect.now} + %s "
                "WHERE id = %s AND lease_token = %s AND status = 'processing'",
                (lease_seconds, lease.task.id, lease.token),
            )
        return renewed == 1

    async def settle(self, lease: Lease, task: Task, delivery: Delivery | None = None) -> bool:
        return await self._write_fenced(lease, task, delivery, only_if_expired=False)

    async def sweep(self, older_than_seconds: float, limit: int) -> list[Task]:
        async with self._db.session(write=True) as session:
            if self._dialect.sweep_lock:
                row = await session.fetchone(self._dialect.sweep_lock)
                if row is None or not row[0]:
                    return []
            rows = await session.fetchall(
                f"SELECT id, body FROM tasks WHERE status IN ('completed', 'failed') "
                f"AND updated_at < {self._dialect.now} - %s ORDER BY seq LIMIT %s",
                (older_than_seconds, limit),
            )
            ids = tuple(str(row[0]) for row in rows)
            if ids:
                marks = ", ".join(["%s"] * len(ids))
                for table, column in (("deliveries", "task_id"), ("idempotency", "task_id"), ("tasks", "id")):
                    await session.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", ids)
        return [_task_decoder.decode(bytes(row[1])) for row in rows]

    async def stage(self, lease: Lease, keys: Sequence[str]) -> bool:
        async with self._db.session(write=True) as session:
            staged = await session.execute(
                "UPDATE tasks SET staged_keys = %s WHERE id = %s AND lease_token = %s AND status = 'processing'",
                (_encoder.encode(list(keys)).decode(), lease.task.id, lease.token),
            )
        return staged == 1

    async def report_progress(self, lease: Lease, progress: Progress) -> RunRequests:
        async with self._db.session(write=True) as session:
            row = await session.fetchone(
                "UPDATE tasks SET progress = %s WHERE id = %s AND lease_token = %s AND status = 'processing' "
                "RETURNING cancel_requested, skip_requested",
                (_encoder.encode(progress), lease.task.id, lease.token),
            )
        return NO_REQUESTS if row is None else RunRequests(cancel=bool(row[0]), skips=int(row[1]))

    async def cancel_pending(self, task: Task, cancelled: Task, delivery: Delivery | None) -> bool:
        async with self._db.session(write=True) as session:
            written = await session.execute(
                f"UPDATE tasks SET status = %s, updated_at = {self._dialect.now}, body = %s, init_image = NULL "
                "WHERE id = %s AND status = 'pending'",
                (cancelled.status.value, _encoder.encode(cancelled), task.id),
            )
            if written == 1 and delivery is not None:
                await self._insert_delivery(session, delivery)
        return written == 1

    async def request_skip(self, task_id: str) -> bool:
        async with self._db.session(write=True) as session:
            written = await session.execute(
                "UPDATE tasks SET skip_requested = skip_requested + 1 WHERE id = %s AND status = 'processing'",
                (task_id,),
            )
            if written == 1 and self._dialect.notify_cancel:
                await session.execute(self._dialect.notify_cancel)
        return written == 1

    async def request_cancel(self, task_id: str) -> bool:
        async with self._db.session(write=True) as session:
            written = await session.execute(
                "UPDATE tasks SET cancel_requested = TRUE WHERE id = %s AND status = 'processing'", (task_id,)
            )
            if written == 1 and self._dialect.notify_cancel:
                await session.execute(self._dialect.notify_cancel)
        return written == 1

    async def expired(self, limit: int) -> list[Lease]:
        async with self._db.session(write=False) as session:
            rows = await session.fetchall(
                f"SELECT {_TASK_COLUMNS}, lease_token, staged_keys FROM tasks WHERE status = 'processing' "
                f"AND (lease_expires_at IS NULL OR lease_expires_at < {self._dialect.now}) ORDER BY seq LIMIT %s",
                (limit,),
            )
        return [
            Lease(task=_task(row), token=row[6] or "", staged_keys=tuple(json.loads(row[7])) if row[7] else ())
            for row in rows
        ]

    async def reap(self, lease: Lease, task: Task, delivery: Delivery | None = None) -> bool:
        return await self._write_fenced(lease, task, delivery, only_if_expired=True)

    async def _write_fenced(
        self, lease: Lease, task: Task, delivery: Delivery | None, *, only_if_expired: bool
    ) -> bool:
        now = self._dialect.now
        # A task written before leases existed (an upgraded SQLite file) has no token: it matches the empty one.
        condition = "id = %s AND COALESCE(lease_token, '') = %s AND status = 'processing'"
        if only_if_expired:
            condition += f" AND (lease_expires_at IS NULL OR lease_expires_at < {now})"
        async with self._db.session(write=True) as session:
            written = await session.execute(
                f"UPDATE tasks SET status = %s, attempts = %s, updated_at = {now}, body = %s, progress = %s, "
                "started_at = %s, "
                "lease_token = NULL, lease_expires_at = NULL, worker_id = NULL, cancel_requested = FALSE, "
                "staged_keys = NULL, "
                f"init_image = CASE WHEN %s THEN NULL ELSE init_image END WHERE {condition}",
                (
                    task.status.value,
                    task.attempts,
                    _encoder.encode(task),
                    _encoded_progress(task),
                    None if task.started_at is None else task.started_at.timestamp(),
                    task.status.is_terminal,
                    task.id,
                    lease.token,
                ),
            )
            if written != 1:
                return False
            if task.status is TaskStatus.PENDING and self._dialect.notify_task:
                await session.execute(self._dialect.notify_task)
            if delivery is not None:
                await self._insert_delivery(session, delivery)
        return True

    async def _insert_delivery(self, session: Session, delivery: Delivery) -> None:
        """Record a finished task's callback delivery, inside the transaction that finished the task."""
        await session.execute(
            "INSERT INTO deliveries (id, task_id, status, next_attempt_at, body) VALUES (%s, %s, %s, %s, %s)",
            (delivery.id, delivery.task_id, delivery.status.value, delivery.next_attempt_at, _encoder.encode(delivery)),
        )
        if self._dialect.notify_delivery:
            await session.execute(self._dialect.notify_delivery)


class SqlCallbackOutbox:
    """CallbackOutbox on the `deliveries` table."""

    def __init__(self, database: SqlDatabase) -> None:
        self._db = database
        self._dialect = database.dialect

    async def for_task(self, task_id: str) -> Delivery | None:
        async with self._db.session(write=False) as session:
            row = await session.fetchone("SELECT body FROM deliveries WHERE task_id = %s", (task_id,))
        return None if row is None else _delivery_decoder.decode(bytes(row[0]))

    async def redeliver(self, previous: Delivery, delivery: Delivery) -> bool:
        async with self._db.session(write=True) as session:
            written = await session.execute(
                "UPDATE deliveries SET id = %s, status = %s, next_attempt_at = %s, body = %s, lease_token = NULL, "
                "lease_expires_at = NULL WHERE id = %s AND status != 'pending'",
                (delivery.id, delivery.status.value, delivery.next_attempt_at, _encoder.encode(delivery), previous.id),
            )
            if written == 1 and self._dialect.notify_delivery:
                await session.execute(self._dialect.notify_delivery)
        return written == 1

    async def claim_due(self, now: float, limit: int, lease_seconds: float) -> list[DeliveryClaim]:
        db_now, token = self._dialect.now, uuid.uuid4().hex
        async with self._db.session(write=True) as session:
            rows = await session.fetchall(
                f"UPDATE deliveries SET lease_token = %s, lease_expires_at = {db_now} + %s WHERE id IN ("
                "SELECT id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= %s "
                f"AND (lease_expires_at IS NULL OR lease_expires_at < {db_now}) "
                f"ORDER BY next_attempt_at LIMIT %s{self._dialect.skip_locked}) RETURNING body",
                (token, lease_seconds, now, limit),
            )
        claims = [DeliveryClaim(_delivery_decoder.decode(bytes(row[0])), token) for row in rows]
        return sorted(claims, key=lambda claim: claim.delivery.next_attempt_at)

    async def record(self, claim: DeliveryClaim, delivery: Delivery) -> bool:
        async with self._db.session(write=True) as session:
            written = await session.execute(
                "UPDATE deliveries SET status = %s, next_attempt_at = %s, body = %s, lease_token = NULL, "
                "lease_expires_at = NULL WHERE id = %s AND lease_token = %s",
                (delivery.status.value, delivery.next_attempt_at, _encoder.encode(delivery), delivery.id, claim.token),
            )
            if written == 1 and delivery.status is DeliveryStatus.PENDING and self._dialect.notify_delivery:
                await session.execute(self._dialect.notify_delivery)
        return written == 1

    async def next_due_at(self) -> float | None:
        async with self._db.session(write=False) as session:
            row = await session.fetchone("SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'pending'")
        return None if row is None or row[0] is None else float(row[0])


class SqlInitImageStore:
    """InitImageStore on the `tasks.init_image` column."""

    def __init__(self, database: SqlDatabase) -> None:
        self._db = database

    async def get(self, task_id: str) -> bytes | None:
        async with self._db.session(write=False) as session:
            row = await session.fetchone("SELECT init_image FROM tasks WHERE id = %s", (task_id,))
        if row is None:
            raise TaskNotFound(TASK_NOT_FOUND_MESSAGE)
        return None if row[0] is None else bytes(row[0])


class SqlPreviewStore:
    """PreviewStore on the `previews` table: one row per running task, replaced by each new preview."""

    def __init__(self, database: SqlDatabase) -> None:
        self._db = database
        self._dialect = database.dialect

    async def put(self, task_id: str, preview: Preview, keep_seconds: float) -> None:
        now = self._dialect.now
        async with self._db.session(write=True) as session:
            await session.execute(
                "INSERT INTO previews (task_id, step, total_steps, width, height, mime, image, posted_at) "
                f"VALUES (%s, %s, %s, %s, %s, %s, %s, {now}) ON CONFLICT (task_id) DO UPDATE SET "
                "step = excluded.step, total_steps = excluded.total_steps, width = excluded.width, "
                "height = excluded.height, mime = excluded.mime, image = excluded.image, "
                "posted_at = excluded.posted_at",
                (task_id, preview.step, preview.total_steps, preview.width, preview.height, preview.mime, preview.data),
            )
            # Rows of runs that ended without deleting theirs (a killed worker) go here, on a later post.
            await session.execute(f"DELETE FROM previews WHERE posted_at < {now} - %s", (keep_seconds,))

    async def get(self, task_id: str, keep_seconds: float) -> Preview | None:
        async with self._db.session(write=False) as session:
            row = await session.fetchone(
                "SELECT step, total_steps, width, height, mime, image FROM previews "
                f"WHERE task_id = %s AND posted_at >= {self._dialect.now} - %s",
                (task_id, keep_seconds),
            )
        if row is None:
            return None
        return Preview(
            step=row[0], total_steps=row[1], width=row[2], height=row[3], mime=str(row[4]), data=bytes(row[5])
        )

    async def delete(self, task_id: str) -> None:
        async with self._db.session(write=True) as session:
            await session.execute("DELETE FROM previews WHERE task_id = %s", (task_id,))


class SqlNodeRegistry:
    """NodeRegistry on the `nodes` table."""

    def __init__(self, database: SqlDatabase) -> None:
        self._db = database
        self._dialect = database.dialect

    async def beat(self, node: NodeInfo) -> None:
        now = self._dialect.now
        async with self._db.session(write=True) as session:
            await session.execute(
                f"INSERT INTO nodes (id, role, heartbeat_at, body) VALUES (%s, %s, {now}, %s) ON CONFLICT (id) "
                f"DO UPDATE SET role = excluded.role, heartbeat_at = {now}, body = excluded.body",
                (node.id, node.role.value, _encoder.encode(node)),
            )

    async def live(self, within_seconds: float) -> list[NodeInfo]:
        async with self._db.session(write=False) as session:
            rows = await session.fetchall(
                f"SELECT body, heartbeat_at FROM nodes WHERE heartbeat_at >= {self._dialect.now} - %s",
                (within_seconds,),
            )
        nodes = [msgspec.structs.replace(_node_decoder.decode(bytes(row[0])), heartbeat_at=row[1]) for row in rows]
        return sorted(nodes, key=lambda node: node.started_at)

    async def leave(self, node_id: str) -> None:
        async with self._db.session(write=True) as session:
            await session.execute("DELETE FROM nodes WHERE id = %s", (node_id,))


class SqlThroughputLog:
    """ThroughputLog on the `throughput` table."""

    # Weight of the newest measurement in the moving average.
    ALPHA = 0.3

    def __init__(self, database: SqlDatabase) -> None:
        self._db = database

    async def record(self, engine: str, seconds_per_work: float) -> None:
        async with self._db.session(write=True) as session:
            await session.execute(
                "INSERT INTO throughput (engine, seconds_per_work, samples) VALUES (%s, %s, 1) ON CONFLICT (engine) "
                "DO UPDATE SET seconds_per_work = throughput.seconds_per_work * %s + excluded.seconds_per_work * %s, "
                "samples = throughput.samples + 1",
                (engine, seconds_per_work, 1 - self.ALPHA, self.ALPHA),
            )

    async def rates(self) -> dict[str, float]:
        async with self._db.session(write=False) as session:
            rows = await session.fetchall("SELECT engine, seconds_per_work FROM throughput")
        return {str(row[0]): float(row[1]) for row in rows}
