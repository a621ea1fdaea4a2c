"""A generation task and its small state machine. Pure: no I/O.

pending --start--> processing --complete--> completed
                             --fail------> failed
                             --retry-----> pending   (the run was cut short: crash or shutdown)
pending --fail--> failed                             (e.g. the model could not be loaded)

A finished task (completed or failed) never changes state again. Every transition stamps updated_at.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime

import msgspec

from sdapi.errors import InvalidTransition
from sdapi.params import GenerationParams


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED)


class Task(msgspec.Struct, frozen=True, kw_only=True):
    """One generation task as the store keeps it."""

    id: str
    status: TaskStatus
    params: GenerationParams
    created_at: datetime
    updated_at: datetime
    attempts: int = 0
    # Storage keys of the generated images, in image order; URLs are built from them when read.
    result_keys: tuple[str, ...] = ()
    error_message: str | None = None
    # Which engine made the images ("torch" or "onnx").
    engine: str | None = None
    # Base URL of the request that created the task; result URLs fall back to it when no public URL is set.
    base_url: str | None = None


def now_utc() -> datetime:
    return datetime.now(UTC)


def new_task_id() -> str:
    return str(uuid.uuid4())


def create(params: GenerationParams, base_url: str | None = None, now: datetime | None = None) -> Task:
    """A new pending task for `params`."""
    stamp = now or now_utc()
    return Task(
        id=new_task_id(),
        status=TaskStatus.PENDING,
        params=params,
        created_at=stamp,
        updated_at=stamp,
        base_url=base_url,
    )


def _move(
    task: Task, allowed_from: tuple[TaskStatus, ...], to: TaskStatus, now: datetime | None, **changes: object
) -> Task:
    if task.status not in allowed_from:
        raise InvalidTransition(f"任务 {task.id} 不能从 {task.status.value} 变为 {to.value}")
    return msgspec.structs.replace(task, status=to, updated_at=now or now_utc(), **changes)


def start(task: Task, now: datetime | None = None) -> Task:
    """pending -> processing; counts one more attempt."""
    return _move(task, (TaskStatus.PENDING,), TaskStatus.PROCESSING, now, attempts=task.attempts + 1)


def complete(task: Task, result_keys: list[str], engine: str, now: datetime | None = None) -> Task:
    """processing -> completed with the stored images."""
    if len(result_keys) != task.params.num_images:
        raise InvalidTransition(
            f"任务 {task.id}：已存储 {len(result_keys)} 张图片，请求的是 {task.params.num_images} 张"
        )
    return _move(
        task,
        (TaskStatus.PROCESSING,),
        TaskStatus.COMPLETED,
        now,
        result_keys=tuple(result_keys),
        engine=engine,
    )


def fail(task: Task, message: str, now: datetime | None = None) -> Task:
    """pending or processing -> failed with a user-safe message."""
    return _move(task, (TaskStatus.PENDING, TaskStatus.PROCESSING), TaskStatus.FAILED, now, error_message=message)


def retry(task: Task, now: datetime | None = None, *, count_attempt: bool = True) -> Task:
    """processing -> pending, to run again. `count_attempt=False` gives back the attempt (a clean shutdown)."""
    attempts = task.attempts if count_attempt else max(task.attempts - 1, 0)
    return _move(task, (TaskStatus.PROCESSING,), TaskStatus.PENDING, now, attempts=attempts)


def recover_interrupted(task: Task, max_attempts: int, now: datetime | None = None) -> Task:
    """A task found `processing` at start-up was cut short by a crash: run it again or, out of attempts, fail it."""
    if task.attempts >= max_attempts:
        return fail(
            task,
            f"生成失败：任务运行时服务中断，已尝试 {task.attempts} 次（上限 {max_attempts} 次）",
            now,
        )
    return retry(task, now)
