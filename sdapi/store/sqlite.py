"""The stores on one SQLite file under data_dir (WAL mode): the zero-setup default.

sqlite3 is synchronous: every statement runs in a worker thread (asyncio.to_thread), one session at a time per
process, so the event loop never waits on the disk. Several processes on one machine may share the file (one box,
several GPUs, one `sdapi worker` each): a write transaction is BEGIN IMMEDIATE, which holds the file's write lock,
so claims and admissions serialise across processes. sqlite3's exceptions become TaskStoreError in `_translated`,
and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TypeVar

from sdapi.errors import StoreUnavailable, TaskStoreError
from sdapi.store import SCHEMA_TOO_NEW, NoChangeFeed, Stores
from sdapi.store.sql import (
    Dialect,
    Row,
    SqlCallbackOutbox,
    SqlInitImageStore,
    SqlNodeRegistry,
    SqlPreviewStore,
    SqlTaskStore,
    SqlThroughputLog,
)

T = TypeVar("T")
OPEN_RETRY_SECONDS = 10.0

DIALECT = Dialect(
    now="((julianday('now') - 2440587.5) * 86400.0)",
    skip_locked="",  # BEGIN IMMEDIATE already makes the claimer the only writer
    admission_lock=None,
    sweep_lock=None,
    notify_task=None,
    notify_delivery=None,
    notify_cancel=None,
)

# Schema versions, in order; PRAGMA user_version holds how many have run. Version 1 is the schema from before
# versioning (its CREATEs are IF NOT EXISTS, so a file from then upgrades in place); version 2 adds leases,
# version 3 progress, cancellation, owners and throughput; version 4 the model columns of affinity; version 5 the
# keys a run stages before uploading.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE IF NOT EXISTS tasks (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, "
        "status TEXT NOT NULL, body BLOB NOT NULL, init_image BLOB)",
        "CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, seq)",
        "CREATE TABLE IF NOT EXISTS deliveries (id TEXT PRIMARY KEY, task_id TEXT NOT NULL UNIQUE, "
        "status TEXT NOT NULL, next_attempt_at REAL NOT NULL, body BLOB NOT NULL)",
        "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_attempt_at)",
    ),
    (
        "ALTER TABLE tasks ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE tasks ADD COLUMN updated_at REAL NOT NULL DEFAULT 0",
        "ALTER TABLE tasks ADD COLUMN lease_token TEXT",
        "ALTER TABLE tasks ADD COLUMN lease_expires_at REAL",
        "ALTER TABLE tasks ADD COLUMN worker_id TEXT",
        # Rows written before version 2 keep these in the body only. Their processing tasks have no lease, so
        # the reaper treats them as expired: the restart recovery of before.
        "UPDATE tasks SET attempts = COALESCE(json_extract(CAST(body AS TEXT), '$.attempts'), 0), "
        "updated_at = (julianday(json_extract(CAST(body AS TEXT), '$.updated_at')) - 2440587.5) * 86400.0",
        "ALTER TABLE deliveries ADD COLUMN lease_token TEXT",
        "ALTER TABLE deliveries ADD COLUMN lease_expires_at REAL",
        "CREATE TABLE nodes (id TEXT PRIMARY KEY, role TEXT NOT NULL, heartbeat_at REAL NOT NULL, body BLOB NOT NULL)",
    ),
    (
        "ALTER TABLE tasks ADD COLUMN progress BLOB",
        "ALTER TABLE tasks ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE tasks ADD COLUMN started_at REAL",
        "ALTER TABLE tasks ADD COLUMN owner TEXT",
        "ALTER TABLE tasks ADD COLUMN cost REAL NOT NULL DEFAULT 0",
        "CREATE INDEX tasks_by_owner ON tasks (owner, seq)",
        "CREATE TABLE idempotency (owner TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, "
        "task_id TEXT NOT NULL, expires_at REAL NOT NULL, PRIMARY KEY (owner, key))",
        "CREATE TABLE throughput (engine TEXT PRIMARY KEY, seconds_per_work REAL NOT NULL, samples INTEGER NOT NULL)",
    ),
    (
        # Model affinity: which model a pending task needs, and since when it waits (database clock).
        "ALTER TABLE tasks ADD COLUMN model TEXT",
        "ALTER TABLE tasks ADD COLUMN submitted_at REAL",
    ),
    (
        # The image keys a run is about to write, recorded before it uploads: the reaper deletes them when the run's
        # lease expires (a worker killed between upload and settle leaves no object behind).
        "ALTER TABLE tasks ADD COLUMN staged_keys TEXT",
    ),
    (
        # Cross-request batching: tasks with equal keys can share one denoising batch (sdapi.core.batching); NULL
        # for a task that always runs alone, and for tasks from before.
        "ALTER TABLE tasks ADD COLUMN batch_key TEXT",
        "CREATE INDEX tasks_by_batch_key ON tasks (batch_key, seq)",
    ),
    (
        # Live previews between processes: the latest one of each running task, replaced in place, deleted when the
        # task ends and after previews.keep_seconds at most (sdapi.previews.board). Transient by design.
        "CREATE TABLE previews (task_id TEXT PRIMARY KEY, step INTEGER NOT NULL, "
        "total_steps INTEGER NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL, mime TEXT NOT NULL, "
        "image BLOB NOT NULL, posted_at REAL NOT NULL)",
    ),
    (
        # A1111's skip: how many times a client asked the running task to end its current image early.
        "ALTER TABLE tasks ADD COLUMN skip_requested INTEGER NOT NULL DEFAULT 0",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


# Primary result codes of a database that is there but cannot be used right now: busy or locked by another process
# past the timeout, an I/O error, a file that cannot be opened (a full or missing disk).
_UNAVAILABLE_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN}


@contextmanager
def _translated() -> Iterator[None]:
    """sqlite3's exceptions, as the rest of sdapi sees them."""
    try:
        yield
    except sqlite3.Error as error:
        code = getattr(error, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _UNAVAILABLE_CODES:
            raise StoreUnavailable(f"任务数据库暂时不可用：{error}") from None
        raise TaskStoreError(f"任务数据库错误：{error}") from None


def _sqlite_sql(sql: str) -> str:
    return sql.replace("%s", "?")


async def _in_thread(work: Callable[[], T]) -> T:
    """`work()` in a worker thread. A thread cannot be stopped: if the caller is cancelled meanwhile, wait for the
    statement to finish before letting the cancellation through, so that the session's rollback never runs beside
    a statement still using the connection."""
    future = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await future
        raise


class _SqliteSession:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection

    def _execute_now(self, sql: str, params: Sequence[object]) -> sqlite3.Cursor:
        with _translated():
            return self._db.execute(_sqlite_sql(sql), tuple(params))

    async def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        cursor = await _in_thread(lambda: self._execute_now(sql, params))
        return cursor.rowcount

    async def fetchone(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        def run() -> Row | None:
            cursor = self._execute_now(sql, params)
            with _translated():
                row: Row | None = cursor.fetchone()
                cursor.fetchall()  # an UPDATE … RETURNING finishes only when every row is read
                return row

        return await _in_thread(run)

    async def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        def run() -> list[Row]:
            cursor = self._execute_now(sql, params)
            with _translated():
                return list(cursor.fetchall())

        return await _in_thread(run)


class SqliteDatabase:
    """One connection to the file; sessions take turns on it."""

    dialect = DIALECT

    def __init__(self, path: Path) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None
        self._turn: asyncio.Lock | None = None

    async def open(self) -> None:
        if self._db is not None:
            return
        await asyncio.to_thread(self._open_now)
        self._turn = asyncio.Lock()

    def _open_now(self) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TaskStoreError(f"无法创建任务数据库目录 {self._path.parent}：{error.strerror}") from None
        with _translated():
            # isolation_level=None: autocommit; a write session BEGINs itself. timeout: how long to wait for the
            # write lock another process holds.
            db = sqlite3.connect(str(self._path), check_same_thread=False, isolation_level=None, timeout=10.0)
            try:
                _prepare(db, self._path)
            except BaseException:
                db.close()  # a refused migration leaves no open file behind
                raise
        self._db = db

    @asynccontextmanager
    async def session(self, *, write: bool) -> AsyncIterator[_SqliteSession]:
        if self._db is None or self._turn is None:
            raise TaskStoreError("任务数据库未打开")
        db = self._db
        async with self._turn:
            session = _SqliteSession(db)
            if not write:
                yield session
                return
            try:
                await session.execute("BEGIN IMMEDIATE")
                yield session
                await session.execute("COMMIT")
            except BaseException:
                await _in_thread(lambda: _rollback(db))
                raise

    async def close(self) -> None:
        if self._db is None:
            return
        db, self._db = self._db, None
        if self._turn is not None:
            async with self._turn:
                await asyncio.to_thread(db.close)
        else:
            await asyncio.to_thread(db.close)


def _prepare(db: sqlite3.Connection, path: Path) -> None:
    """WAL mode and the schema. Processes opening a new file together can find it locked without waiting (switching
    the journal mode is not covered by the busy timeout): they retry for OPEN_RETRY_SECONDS."""
    deadline = time.monotonic() + OPEN_RETRY_SECONDS
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable across process crashes in WAL mode (only an OS crash can lose the last commit).
            db.execute("PRAGMA synchronous=NORMAL")
            _migrate(db, path)
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        with _translated():
            db.execute("ROLLBACK")


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Run the migrations this file lacks, in one exclusive transaction (processes starting together migrate
    once); refuse a file from a newer sdapi."""
    db.execute("BEGIN IMMEDIATE")
    try:
        found = int(db.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            raise TaskStoreError(
                SCHEMA_TOO_NEW.format(database=f"SQLite file {path}", found=found, known=SCHEMA_VERSION)
            )
        for statements in _MIGRATIONS[found:]:
            for statement in statements:
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def open_sqlite(path: Path) -> Stores:
    """The stores on the SQLite file at `path` (created and migrated by `database.open()`)."""
    database = SqliteDatabase(path)
    return Stores(
        tasks=SqlTaskStore(database),
        outbox=SqlCallbackOutbox(database),
        init_images=SqlInitImageStore(database),
        nodes=SqlNodeRegistry(database),
        throughput=SqlThroughputLog(database),
        previews=SqlPreviewStore(database),
        feed=NoChangeFeed(),
        database=database,
    )
