"""The stores on PostgreSQL (store.backend: postgres): many API nodes and workers on one database.

psycopg 3 (async) through a psycopg-pool pool of `store.postgres.pool_size` connections. The pool checks a connection
before lending it and replaces broken ones, reconnecting with backoff, so after PostgreSQL restarts the nodes
reconnect on their own; while it is down every call fails fast (within POOL_TIMEOUT_SECONDS) with StoreUnavailable,
which the API answers with 503.

Wake-ups use LISTEN/NOTIFY on a connection of their own, outside the pool: LISTEN lives in a session, so it does not
survive a transaction-mode pooler such as pgbouncer (point `dsn` at PostgreSQL itself, or a session-mode pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager

import psycopg
import psycopg_pool

from sdapi.errors import StoreUnavailable, TaskStoreError
from sdapi.store import SCHEMA_TOO_NEW, Stores
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

logger = logging.getLogger(__name__)

TASK_CHANNEL = "sdapi_tasks"
DELIVERY_CHANNEL = "sdapi_deliveries"
CANCEL_CHANNEL = "sdapi_cancels"
# Keys of pg_advisory_lock: migrations (start-up), admissions (queue.max_pending), the retention sweep.
_MIGRATION_LOCK = 7_263_001
_ADMISSION_LOCK = 7_263_002
_SWEEP_LOCK = 7_263_003
# How long a call waits for a connection before it fails (the database is down or every connection is busy).
POOL_TIMEOUT_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 5
# The change feed reconnects after these waits (doubling), while PostgreSQL is unreachable.
LISTEN_RETRY_FIRST_SECONDS = 0.5
LISTEN_RETRY_MAX_SECONDS = 10.0

DIALECT = Dialect(
    now="extract(epoch from clock_timestamp())::double precision",
    skip_locked=" FOR UPDATE SKIP LOCKED",
    admission_lock=f"SELECT pg_advisory_xact_lock({_ADMISSION_LOCK})",
    sweep_lock=f"SELECT pg_try_advisory_xact_lock({_SWEEP_LOCK})",
    notify_task=f"NOTIFY {TASK_CHANNEL}",
    notify_delivery=f"NOTIFY {DELIVERY_CHANNEL}",
    notify_cancel=f"NOTIFY {CANCEL_CHANNEL}",
)

# Schema versions, in order; schema_migrations holds the ones that ran.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE tasks (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
        "status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, updated_at DOUBLE PRECISION NOT NULL, "
        "body BYTEA NOT NULL, init_image BYTEA, lease_token TEXT, lease_expires_at DOUBLE PRECISION, "
        "worker_id TEXT)",
        "CREATE INDEX tasks_pending ON tasks (seq) WHERE status = 'pending'",
        "CREATE INDEX tasks_processing ON tasks (lease_expires_at) WHERE status = 'processing'",
        "CREATE INDEX tasks_by_status ON tasks (status)",
        "CREATE TABLE deliveries (id TEXT PRIMARY KEY, task_id TEXT NOT NULL UNIQUE, status TEXT NOT NULL, "
        "next_attempt_at DOUBLE PRECISION NOT NULL, body BYTEA NOT NULL, lease_token TEXT, "
        "lease_expires_at DOUBLE PRECISION)",
        "CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending'",
        "CREATE TABLE nodes (id TEXT PRIMARY KEY, role TEXT NOT NULL, heartbeat_at DOUBLE PRECISION NOT NULL, "
        "body BYTEA NOT NULL)",
    ),
    (
        "ALTER TABLE tasks ADD COLUMN progress BYTEA",
        "ALTER TABLE tasks ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT FALSE",
        "ALTER TABLE tasks ADD COLUMN started_at DOUBLE PRECISION",
        "ALTER TABLE tasks ADD COLUMN owner TEXT",
        "ALTER TABLE tasks ADD COLUMN cost DOUBLE PRECISION NOT NULL DEFAULT 0",
        "CREATE INDEX tasks_by_owner ON tasks (owner, seq)",
        "CREATE TABLE idempotency (owner TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, "
        "task_id TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (owner, key))",
        "CREATE TABLE throughput (engine TEXT PRIMARY KEY, seconds_per_work DOUBLE PRECISION NOT NULL, "
        "samples INTEGER NOT NULL)",
    ),
    (
        # Model affinity: which model a pending task needs, and since when it waits (database clock).
        "ALTER TABLE tasks ADD COLUMN model TEXT",
        "ALTER TABLE tasks ADD COLUMN submitted_at DOUBLE PRECISION",
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
        # task ends and after previews.keep_seconds at most (sdapi.previews.board). Transient by design: UNLOGGED, so
        # they never reach the WAL, replicas or a crash recovery.
        "CREATE UNLOGGED TABLE previews (task_id TEXT PRIMARY KEY, step INTEGER NOT NULL, "
        "total_steps INTEGER NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL, mime TEXT NOT NULL, "
        "image BYTEA NOT NULL, posted_at DOUBLE PRECISION NOT NULL)",
    ),
    (
        # A1111's skip: how many times a client asked the running task to end its current image early.
        "ALTER TABLE tasks ADD COLUMN skip_requested INTEGER NOT NULL DEFAULT 0",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """psycopg's and the pool's exceptions, as the rest of sdapi sees them."""
    try:
        yield
    except psycopg_pool.PoolTimeout:
        raise StoreUnavailable("任务数据库暂时不可用：无法连接 PostgreSQL") from None
    except psycopg.OperationalError as error:  # connection refused or lost, server shutting down
        raise StoreUnavailable(f"任务数据库暂时不可用：{error}".strip()) from None
    except psycopg.Error as error:
        raise TaskStoreError(f"任务数据库错误：{type(error).__name__}: {error}".strip()) from None


class _PostgresSession:
    def __init__(self, connection: psycopg.AsyncConnection[Row]) -> None:
        self._connection = connection

    async def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        with _translated():
            cursor = await self._connection.execute(sql, params or None)
            return cursor.rowcount

    async def fetchone(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        with _translated():
            cursor = await self._connection.execute(sql, params or None)
            return await cursor.fetchone()

    async def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        with _translated():
            cursor = await self._connection.execute(sql, params or None)
            return await cursor.fetchall()


class PostgresDatabase:
    """The connection pool; sessions borrow one connection each."""

    dialect = DIALECT

    def __init__(self, dsn: str, pool_size: int) -> None:
        self._dsn = dsn
        self._pool = psycopg_pool.AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=POOL_TIMEOUT_SECONDS,
            # A connection broken by a restart is found (one empty query) and replaced before it is lent, so once
            # PostgreSQL is back no request fails on a stale connection.
            check=psycopg_pool.AsyncConnectionPool.check_connection,
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_SECONDS},
            name="sdapi",
        )
        self._opened = False

    @property
    def dsn(self) -> str:
        return self._dsn

    async def open(self) -> None:
        if self._opened:
            return
        with _translated():
            await self._pool.open(wait=False)
        self._opened = True
        try:
            await self._migrate()
        except BaseException:
            # A refused migration (a schema from a newer sdapi), or the database gone meanwhile: close the pool
            # before the error propagates, so no connection (nor the pool's worker tasks) outlives the failed start.
            await self.close()
            raise

    @asynccontextmanager
    async def session(self, *, write: bool) -> AsyncIterator[_PostgresSession]:
        with _translated():
            async with self._pool.connection() as connection:
                if not write:
                    yield _PostgresSession(connection)
                    return
                async with connection.transaction():
                    yield _PostgresSession(connection)

    async def _migrate(self) -> None:
        """Run the migrations the database lacks, under an advisory lock: nodes starting together migrate once,
        the others wait and then find nothing to do. Refuse a schema from a newer sdapi."""
        with _translated():
            async with self._pool.connection() as connection:
                await connection.execute(f"SELECT pg_advisory_lock({_MIGRATION_LOCK})")
                try:
                    await self._migrate_locked(connection)
                finally:
                    await connection.execute(f"SELECT pg_advisory_unlock({_MIGRATION_LOCK})")

    async def _migrate_locked(self, connection: psycopg.AsyncConnection[Row]) -> None:
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        cursor = await connection.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        row = await cursor.fetchone()
        found = 0 if row is None else int(row[0])
        if found > SCHEMA_VERSION:
            raise TaskStoreError(
                SCHEMA_TOO_NEW.format(database="PostgreSQL database", found=found, known=SCHEMA_VERSION)
            )
        for version, statements in enumerate(_MIGRATIONS[found:], start=found + 1):
            async with connection.transaction():
                for statement in statements:
                    await connection.execute(statement)
                await connection.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
            logger.info("PostgreSQL schema migrated to version %d", version)

    async def close(self) -> None:
        if self._opened:
            self._opened = False
            await self._pool.close()


class PostgresChangeFeed:
    """LISTEN on the two channels, on its own connection, reconnecting with backoff while the database is away."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._task: asyncio.Task[None] | None = None

    async def start(
        self, on_task: Callable[[], None], on_delivery: Callable[[], None], on_cancel: Callable[[], None]
    ) -> None:
        handlers = {TASK_CHANNEL: on_task, DELIVERY_CHANNEL: on_delivery, CANCEL_CHANNEL: on_cancel}
        self._task = asyncio.get_running_loop().create_task(self._listen(handlers), name="sdapi-listen")

    async def _listen(self, handlers: dict[str, Callable[[], None]]) -> None:
        wait = LISTEN_RETRY_FIRST_SECONDS
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
                ) as connection:
                    for channel in handlers:
                        await connection.execute(f"LISTEN {channel}")
                    wait = LISTEN_RETRY_FIRST_SECONDS
                    # What was announced while we were not listening is found by the loops' own poll.
                    for handler in handlers.values():
                        handler()
                    async for notification in connection.notifies():
                        handlers[notification.channel]()
            except psycopg.Error as error:
                logger.warning("change feed: %s; listening again in %.1fs", error, wait)
            await asyncio.sleep(wait)
            wait = min(wait * 2, LISTEN_RETRY_MAX_SECONDS)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def open_postgres(dsn: str, pool_size: int) -> Stores:
    """The stores on the PostgreSQL database at `dsn` (connected and migrated by `database.open()`)."""
    database = PostgresDatabase(dsn, pool_size)
    return Stores(
        tasks=SqlTaskStore(database),
        outbox=SqlCallbackOutbox(database),
        init_images=SqlInitImageStore(database),
        nodes=SqlNodeRegistry(database),
        throughput=SqlThroughputLog(database),
        previews=SqlPreviewStore(database),
        feed=PostgresChangeFeed(dsn),
        database=database,
    )
