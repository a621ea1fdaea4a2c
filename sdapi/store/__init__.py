"""TaskStore: where tasks live between the API and the worker."""

from __future__ import annotations

from typing import Protocol

from sdapi.deliveries import Delivery
from sdapi.tasks import Task, TaskStatus


class TaskStore(Protocol):
    """Durable storage of tasks. Transitions are decided in sdapi.tasks; the store only persists them."""

    def add(self, task: Task, init_image: bytes | None = None) -> None:
        """Persist a new task (and the raw bytes of its init image, kept apart from the task body)."""

    def get(self, task_id: str) -> Task:
        """The task with this id; raise TaskNotFound."""

    def update(self, task: Task, expected_status: TaskStatus, delivery: Delivery | None = None) -> bool:
        """Write `task` if the stored copy still has `expected_status`; return whether it was written.

        `delivery`, when given, is recorded in the same transaction (the callback outbox).
        """

    def save_delivery(self, delivery: Delivery) -> None:
        """Record a delivery's new state."""

    def delivery_for(self, task_id: str) -> Delivery | None:
        """The callback delivery of a task, if it has one."""

    def due_deliveries(self, now: float, limit: int) -> list[Delivery]:
        """Pending deliveries whose next attempt is due, soonest first."""

    def next_delivery_at(self) -> float | None:
        """When the soonest pending delivery is due, or None."""

    def next_pending(self) -> Task | None:
        """The oldest pending task, or None."""

    def init_image(self, task_id: str) -> bytes | None:
        """The init image bytes of a task, if it has one."""

    def count(self, status: TaskStatus) -> int:
        """How many tasks have `status`."""

    def with_status(self, status: TaskStatus) -> list[Task]:
        """Every task with `status`, oldest first."""

    def close(self) -> None:
        """Release the database."""
