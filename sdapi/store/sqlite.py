"""The SQLite TaskStore: one file under data_dir, WAL mode, one row per task."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import msgspec

from sdapi.deliveries import Delivery, DeliveryStatus
from sdapi.errors import TaskNotFound, TaskStoreError
from sdapi.tasks import Task, TaskStatus

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
_decoder = msgspec.json.Decoder(Task)
_delivery_decoder = msgspec.json.Decoder(Delivery)


class SqliteTaskStore:
    """TaskStore on a SQLite file. Safe to call from several threads; calls are short and serialised."""

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: autocommit; each statement is its own transaction unless we BEGIN.
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable across process crashes in WAL mode (only an OS crash can lose the last commit).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as error:
            raise TaskStoreError(f"cannot open task database {path}: {error}") from None
        self._lock = threading.Lock()

    def _execute(self, sql: str, parameters: tuple[object, ...] = ()) -> sqlite3.Cursor:
        try:
            with self._lock:
                return self._db.execute(sql, parameters)
        except sqlite3.Error as error:
            raise TaskStoreError(f"task database error: {error}") from None

    def add(self, task: Task, init_image: bytes | None = None) -> None:
        self._execute(
            "INSERT INTO tasks (id, status, body, init_image) VALUES (?, ?, ?, ?)",
            (task.id, task.status.value, _encoder.encode(task), init_image),
        )

    def get(self, task_id: str) -> Task:
        row = self._execute("SELECT body FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise TaskNotFound("任务不存在")
        return _decoder.decode(row[0])

    def update(self, task: Task, expected_status: TaskStatus, delivery: Delivery | None = None) -> bool:
        # A finished task never runs again, so its init image is dropped to keep the database small.
        # The task's new state and its callback delivery are written in one transaction: the outbox.
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    cursor = self._db.execute(
                        "UPDATE tasks SET status = ?, body = ?, "
                        "init_image = CASE WHEN ? THEN NULL ELSE init_image END WHERE id = ? AND status = ?",
                        (
                            task.status.value,
                            _encoder.encode(task),
                            task.status.is_terminal,
                            task.id,
                            expected_status.value,
                        ),
                    )
                    written = cursor.rowcount == 1
                    if written and delivery is not None:
                        self._write_delivery(delivery)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as error:
            raise TaskStoreError(f"task database error: {error}") from None
        return written

    def _write_delivery(self, delivery: Delivery) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO deliveries (id, task_id, status, next_attempt_at, body) VALUES (?, ?, ?, ?, ?)",
            (delivery.id, delivery.task_id, delivery.status.value, delivery.next_attempt_at, _encoder.encode(delivery)),
        )

    def save_delivery(self, delivery: Delivery) -> None:
        try:
            with self._lock:
                self._write_delivery(delivery)
        except sqlite3.Error as error:
            raise TaskStoreError(f"task database error: {error}") from None

    def delivery_for(self, task_id: str) -> Delivery | None:
        row = self._execute("SELECT body FROM deliveries WHERE task_id = ?", (task_id,)).fetchone()
        return None if row is None else _delivery_decoder.decode(row[0])

    def due_deliveries(self, now: float, limit: int) -> list[Delivery]:
        rows = self._execute(
            "SELECT body FROM deliveries WHERE status = ? AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?",
            (DeliveryStatus.PENDING.value, now, limit),
        ).fetchall()
        return [_delivery_decoder.decode(row[0]) for row in rows]

    def next_delivery_at(self) -> float | None:
        row = self._execute(
            "SELECT MIN(next_attempt_at) FROM deliveries WHERE status = ?", (DeliveryStatus.PENDING.value,)
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def next_pending(self) -> Task | None:
        row = self._execute(
            "SELECT body FROM tasks WHERE status = ? ORDER BY seq LIMIT 1", (TaskStatus.PENDING.value,)
        ).fetchone()
        return None if row is None else _decoder.decode(row[0])

    def init_image(self, task_id: str) -> bytes | None:
        row = self._execute("SELECT init_image FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise TaskNotFound("任务不存在")
        return None if row[0] is None else bytes(row[0])

    def count(self, status: TaskStatus) -> int:
        row = self._execute("SELECT COUNT(*) FROM tasks WHERE status = ?", (status.value,)).fetchone()
        return int(row[0])

    def with_status(self, status: TaskStatus) -> list[Task]:
        rows = self._execute("SELECT body FROM tasks WHERE status = ? ORDER BY seq", (status.value,)).fetchall()
        return [_decoder.decode(row[0]) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
