"""The order a worker claims pending tasks in, stated once. The SQL stores say it in SQL (sdapi.store.sql's claim),
the in-memory fake runs this function, and the store contract suite holds all of them to the same cases.

Skipped: tasks of the models this worker failed to load (`skip`); tasks from before models were recorded (model
None) are never skipped. Then, when the worker has models loaded, first the tasks it can run without loading one
(model None or loaded) and those that waited past `affinity_max_wait` seconds (no starvation), then the rest;
oldest first (queue order) within each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Queued:
    """A pending task as the claim order sees it."""

    task_id: str
    model: str | None
    submitted_at: float  # when it entered the queue (seconds since the epoch)


def claim_order(
    pending: Sequence[Queued],
    loaded: Sequence[str],
    affinity_max_wait: float,
    skip: Sequence[str],
    now: float,
) -> list[str]:
    """The ids of `pending` (in queue order, oldest first) in the order a worker with `loaded` models claims them."""
    eligible = [task for task in pending if task.model is None or task.model not in skip]
    if not loaded:
        return [task.task_id for task in eligible]

    def rank(task: Queued) -> int:
        ready = task.model is None or task.model in loaded or task.submitted_at < now - affinity_max_wait
        return 0 if ready else 1

    return [task.task_id for task in sorted(eligible, key=rank)]  # sorted() is stable: queue order within a rank
