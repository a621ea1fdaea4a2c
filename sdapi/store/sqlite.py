"""The SQLite TaskStore: one file under data_dir, WAL mode, one row per task."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import msgspec

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
"""

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Task)


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

    def update(self, task: Task, expected_status: TaskStatus) -> bool:
        # A finished task never runs again, so its init image is dropped to keep the database small.
        cursor = self._execute(
            "UPDATE tasks SET status = ?, body = ?, init_image = CASE WHEN ? THEN NULL ELSE init_image END "
            "WHERE id = ? AND status = ?",
            (
                task.status.value,
                _encoder.encode(task),
                task.status.is_terminal,
                task.id,
                expected_status.value,
            ),
        )
        return cursor.rowcount == 1

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
