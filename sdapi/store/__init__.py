"""The task database, split by concern: tasks, the callback outbox, init images. All async, so a network database
fits behind the same interfaces without blocking the event loop. sqlite.py implements them on one SQLite file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sdapi.deliveries import Delivery
from sdapi.tasks import Task, TaskStatus


class TaskStore(Protocol):
    """Durable storage of tasks. Transitions are decided in sdapi.tasks; the store only persists them."""

    async def add(self, task: Task, init_image: bytes | None, max_pending: int) -> bool:
        """Admit a new pending task if fewer than `max_pending` tasks are pending, in one atomic step (no
        count-then-insert race); its init image bytes are kept apart from the task body. Return whether admitted."""

    async def get(self, task_id: str) -> Task:
        """The task with this id; raise TaskNotFound."""

    async def update(self, task: Task, expected_status: TaskStatus, delivery: Delivery | None = None) -> bool:
        """Write `task` if the stored copy still has `expected_status`; return whether it was written.

        `delivery`, when given, is recorded in the same transaction (the callback outbox). A finished task's
        init image is dropped in the same write.
        """

    async def next_pending(self) -> Task | None:
        """The oldest pending task, or None."""

    async def count(self, status: TaskStatus) -> int:
        """How many tasks have `status`."""

    async def with_status(self, status: TaskStatus) -> list[Task]:
        """Every task with `status`, oldest first."""


class CallbackOutbox(Protocol):
    """Callback deliveries: written with the task's final state (TaskStore.update), then sent and updated."""

    async def save(self, delivery: Delivery) -> None:
        """Record a delivery's new state."""

    async def for_task(self, task_id: str) -> Delivery | None:
        """The callback delivery of a task, if it has one."""

    async def due(self, now: float, limit: int) -> list[Delivery]:
        """Pending deliveries whose next attempt is due, soonest first."""

    async def next_due_at(self) -> float | None:
        """When the soonest pending delivery is due, or None."""


class InitImageStore(Protocol):
    """The raw init images of image-to-image tasks (written by TaskStore.add, dropped when the task ends)."""

    async def get(self, task_id: str) -> bytes | None:
        """The init image bytes of a task, None when it has none; raise TaskNotFound."""


class Closeable(Protocol):
    async def close(self) -> None:
        """Release the database."""


@dataclass(frozen=True)
class Stores:
    """The three stores of one database, and the handle that closes it."""

    tasks: TaskStore
    outbox: CallbackOutbox
    init_images: InitImageStore
    database: Closeable
