"""The stores on one SQLite file under data_dir (WAL mode): tasks, callback outbox, init images.

sqlite3 is synchronous: every call runs in a worker thread (asyncio.to_thread) behind one lock, so the event loop
never waits on the disk. sqlite3's exceptions become TaskStoreError in `_translated`, and nowhere else.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import msgspec

from sdapi.deliveries import Delivery, DeliveryStatus
from sdapi.errors import TaskNotFound, TaskStoreError
from sdapi.store import Stores
from sdapi.tasks import Task, TaskStatus

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    body BLOB NOT NULL,
    init_image BLOB
);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, seq);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY,
    task_id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    next_attempt_at REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_attempt_at);
"""

_encoder = msgspec.json.Encoder()
_task_decoder = msgspec.json.Decoder(Task)
_delivery_decoder = msgspec.json.Decoder(Delivery)
_NOT_FOUND = "任务不存在"


@contextmanager
def _translated() -> Iterator[None]:
    """sqlite3's exceptions, as the rest of sdapi sees them."""
    try:
        yield
    except sqlite3.Error as error:
        raise TaskStoreError(f"任务数据库错误：{error}") from None


class SqliteDatabase:
    """One connection to the file, shared by the three stores; calls are short, serialised and off the loop."""

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TaskStoreError(f"无法创建任务数据库目录 {path.parent}：{error.strerror}") from None
        with _translated():
            # isolation_level=None: autocommit; each statement is its own transaction unless we BEGIN.
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable across process crashes in WAL mode (only an OS crash can lose the last commit).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work(connection)` in a thread, alone on the connection, with sqlite3 errors translated."""
        return await asyncio.to_thread(self._run_now, work)

    def _run_now(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock, _translated():
            return work(self._db)

    async def transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work(connection)` inside BEGIN IMMEDIATE … COMMIT (rolled back if it raises)."""

        def wrapped(db: sqlite3.Connection) -> T:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        return await self.run(wrapped)

    async def close(self) -> None:
        await asyncio.to_thread(self._close_now)

    def _close_now(self) -> None:
        with self._lock:
            self._db.close()


def _write_delivery(db: sqlite3.Connection, delivery: Delivery) -> None:
    db.execute(
        "INSERT OR REPLACE INTO deliveries (id, task_id, status, next_attempt_at, body) VALUES (?, ?, ?, ?, ?)",
        (delivery.id, delivery.task_id, delivery.status.value, delivery.next_attempt_at, _encoder.encode(delivery)),
    )


class SqliteTaskStore:
    """TaskStore on the `tasks` table."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._database = database

    async def add(self, task: Task, init_image: bytes | None, max_pending: int) -> bool:
        body = _encoder.encode(task)

        def insert_if_room(db: sqlite3.Connection) -> bool:
            # One statement: the count and the insert cannot interleave with another writer's.
            cursor = db.execute(
                "INSERT INTO tasks (id, status, body, init_image) SELECT ?, ?, ?, ? "
                "WHERE (SELECT COUNT(*) FROM tasks WHERE status = ?) < ?",
                (task.id, task.status.value, body, init_image, TaskStatus.PENDING.value, max_pending),
            )
            return cursor.rowcount == 1

        return await self._database.run(insert_if_room)

    async def get(self, task_id: str) -> Task:
        row = await self._database.run(
            lambda db: db.execute("SELECT body FROM tasks WHERE id = ?", (task_id,)).fetchone()
        )
        if row is None:
            raise TaskNotFound(_NOT_FOUND)
        return _task_decoder.decode(row[0])

    async def update(self, task: Task, expected_status: TaskStatus, delivery: Delivery | None = None) -> bool:
        body = _encoder.encode(task)

        def write(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "UPDATE tasks SET status = ?, body = ?, "
                "init_image = CASE WHEN ? THEN NULL ELSE init_image END WHERE id = ? AND status = ?",
                (task.status.value, body, task.status.is_terminal, task.id, expected_status.value),
            )
            written = cursor.rowcount == 1
            if written and delivery is not None:
                _write_delivery(db, delivery)
            return written

        return await self._database.transaction(write)

    async def next_pending(self) -> Task | None:
        row = await self._database.run(
            lambda db: db.execute(
                "SELECT body FROM tasks WHERE status = ? ORDER BY seq LIMIT 1", (TaskStatus.PENDING.value,)
            ).fetchone()
        )
        return None if row is None else _task_decoder.decode(row[0])

    async def count(self, status: TaskStatus) -> int:
        row = await self._database.run(
            lambda db: db.execute("SELECT COUNT(*) FROM tasks WHERE status = ?", (status.value,)).fetchone()
        )
        return int(row[0])

    async def with_status(self, status: TaskStatus) -> list[Task]:
        rows = await self._database.run(
            lambda db: db.execute("SELECT body FROM tasks WHERE status = ? ORDER BY seq", (status.value,)).fetchall()
        )
        return [_task_decoder.decode(row[0]) for row in rows]


class SqliteCallbackOutbox:
    """CallbackOutbox on the `deliveries` table."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._database = database

    async def save(self, delivery: Delivery) -> None:
        await self._database.run(lambda db: _write_delivery(db, delivery))

    async def for_task(self, task_id: str) -> Delivery | None:
        row = await self._database.run(
            lambda db: db.execute("SELECT body FROM deliveries WHERE task_id = ?", (task_id,)).fetchone()
        )
        return None if row is None else _delivery_decoder.decode(row[0])

    async def due(self, now: float, limit: int) -> list[Delivery]:
        rows = await self._database.run(
            lambda db: db.execute(
                "SELECT body FROM deliveries WHERE status = ? AND next_attempt_at <= ? "
                "ORDER BY next_attempt_at LIMIT ?",
                (DeliveryStatus.PENDING.value, now, limit),
            ).fetchall()
        )
        return [_delivery_decoder.decode(row[0]) for row in rows]

    async def next_due_at(self) -> float | None:
        row = await self._database.run(
            lambda db: db.execute(
                "SELECT MIN(next_attempt_at) FROM deliveries WHERE status = ?", (DeliveryStatus.PENDING.value,)
            ).fetchone()
        )
        return None if row[0] is None else float(row[0])


class SqliteInitImageStore:
    """InitImageStore on the `tasks.init_image` column."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._database = database

    async def get(self, task_id: str) -> bytes | None:
        row = await self._database.run(
            lambda db: db.execute("SELECT init_image FROM tasks WHERE id = ?", (task_id,)).fetchone()
        )
        if row is None:
            raise TaskNotFound(_NOT_FOUND)
        return None if row[0] is None else bytes(row[0])


def open_sqlite(path: Path) -> Stores:
    """The three stores on the SQLite file at `path` (created when missing); raise TaskStoreError."""
    database = SqliteDatabase(path)
    return Stores(
        tasks=SqliteTaskStore(database),
        outbox=SqliteCallbackOutbox(database),
        init_images=SqliteInitImageStore(database),
        database=database,
    )
