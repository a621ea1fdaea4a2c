"""A generation task and its small state machine. Pure: no I/O.

pending    --start----> processing                    (a worker claimed it; counts an attempt)
processing --complete-> completed
processing --fail-----> failed
processing --retry----> pending                       (the run was cut short: crash, lost lease or shutdown)
pending, processing --cancel--> failed                (a client cancelled it; error_code "cancelled")

A finished task (completed or failed) never changes state again. Every transition stamps updated_at; start stamps
started_at, the end finished_at. A failed task carries an error_code (sdapi.errors.ErrorCode) beside its message.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime

import msgspec

from sdapi.core.params import GenerationParams
from sdapi.errors import ErrorCode, InvalidTransition


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED)


CANCELLED_MESSAGE = "任务已取消"


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    """How far a processing task is: denoising steps over all its batches, and images finished."""

    step: int
    total_steps: int
    images_done: int
    num_images: int

    @property
    def percent(self) -> float:
        return round(100.0 * self.step / self.total_steps, 1) if self.total_steps else 0.0


class StoredImage(msgspec.Struct, frozen=True, kw_only=True):
    """One generated image as stored: its key, its seed, and what a client checks it against."""

    key: str
    seed: int
    width: int
    height: int
    bytes: int
    sha256: str
    # The generation parameters as AUTOMATIC1111's infotext, exactly as embedded in the image ("" when
    # output.embed_parameters is off, or for images stored before this was recorded).
    infotext: str = ""


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
    error_code: ErrorCode | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Written by the worker while it runs (at most about once a second); kept once the task ends.
    progress: Progress | None = None
    # Which engine made the images ("torch" or "onnx"), and with which scheduler class: what the run reported.
    engine: str | None = None
    scheduler: str | None = None
    # Base URL of the request that created the task; result URLs fall back to it when no public URL is set.
    base_url: str | None = None
    # The caller that created it (sdapi.core.callers: the API key's name, never the key).
    owner: str | None = None
    # The images of a completed task, in image order (their keys are result_keys).
    images: tuple[StoredImage, ...] = ()
    # The X-Request-ID of the HTTP request that created it: its log lines carry it on every node.
    request_id: str | None = None
    # The API it came through: native, openai or a1111 (a label of its metrics).
    dialect: str = "native"
    # The W3C traceparent of the request that created it (sdapi.observability.tracing): the worker's spans of its
    # run continue that trace. None when tracing is off.
    traceparent: str | None = None


def now_utc() -> datetime:
    return datetime.now(UTC)


def new_task_id() -> str:
    return str(uuid.uuid4())


def create(
    params: GenerationParams,
    base_url: str | None = None,
    now: datetime | None = None,
    owner: str | None = None,
    request_id: str | None = None,
    dialect: str = "native",
    traceparent: str | None = None,
) -> Task:
    """A new pending task for `params`, owned by `owner`, created by request `request_id` through `dialect`."""
    stamp = now or now_utc()
    return Task(
        id=new_task_id(),
        status=TaskStatus.PENDING,
        params=params,
        created_at=stamp,
        updated_at=stamp,
        base_url=base_url,
        owner=owner,
        request_id=request_id,
        traceparent=traceparent,
        dialect=dialect,
    )


def _move(
    task: Task, allowed_from: tuple[TaskStatus, ...], to: TaskStatus, now: datetime | None, **changes: object
) -> Task:
    if task.status not in allowed_from:
        raise InvalidTransition(f"任务 {task.id} 不能从 {task.status.value} 变为 {to.value}")
    return msgspec.structs.replace(task, status=to, updated_at=now or now_utc(), **changes)


def start(task: Task, now: datetime | None = None) -> Task:
    """pending -> processing; counts one more attempt."""
    stamp = now or now_utc()
    attempts = task.attempts + 1
    return _move(task, (TaskStatus.PENDING,), TaskStatus.PROCESSING, stamp, attempts=attempts, started_at=stamp)


def complete(
    task: Task,
    result_keys: list[str],
    engine: str,
    now: datetime | None = None,
    images: tuple[StoredImage, ...] = (),
    scheduler: str | None = None,
) -> Task:
    """processing -> completed with the stored images."""
    if len(result_keys) != task.params.num_images:
        raise InvalidTransition(
            f"任务 {task.id}：已存储 {len(result_keys)} 张图片，请求的是 {task.params.num_images} 张"
        )
    stamp = now or now_utc()
    return _move(
        task,
        (TaskStatus.PROCESSING,),
        TaskStatus.COMPLETED,
        stamp,
        result_keys=tuple(result_keys),
        engine=engine,
        scheduler=scheduler,
        finished_at=stamp,
        images=images,
    )


def fail(task: Task, message: str, code: ErrorCode = ErrorCode.INTERNAL, now: datetime | None = None) -> Task:
    """pending or processing -> failed with a user-safe message and its error code."""
    stamp = now or now_utc()
    return _move(
        task,
        (TaskStatus.PENDING, TaskStatus.PROCESSING),
        TaskStatus.FAILED,
        stamp,
        error_message=message,
        error_code=code,
        finished_at=stamp,
    )


def cancel(task: Task, now: datetime | None = None) -> Task:
    """pending or processing -> failed, cancelled by a client."""
    return fail(task, CANCELLED_MESSAGE, ErrorCode.CANCELLED, now)


def retry(task: Task, now: datetime | None = None, *, count_attempt: bool = True) -> Task:
    """processing -> pending, to run again. `count_attempt=False` gives back the attempt (a clean shutdown)."""
    attempts = task.attempts if count_attempt else max(task.attempts - 1, 0)
    return _move(
        task, (TaskStatus.PROCESSING,), TaskStatus.PENDING, now, attempts=attempts, started_at=None, progress=None
    )


def recover_interrupted(task: Task, max_attempts: int, now: datetime | None = None) -> Task:
    """A task found `processing` at start-up was cut short by a crash: run it again or, out of attempts, fail it."""
    if task.attempts >= max_attempts:
        return fail(
            task,
            f"生成失败：任务运行时服务中断，已尝试 {task.attempts} 次（上限 {max_attempts} 次）",
            ErrorCode.ATTEMPTS_EXHAUSTED,
            now,
        )
    return retry(task, now)
