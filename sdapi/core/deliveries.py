"""A callback delivery as the outbox keeps it, and its retry schedule. Pure: no I/O."""

from __future__ import annotations

import enum
import random
import uuid

import msgspec

from sdapi.core.tasks import Task


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class AttemptRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One POST of a delivery, for the delivery log."""

    at: float  # unix time
    webhook_id: str
    http_status: int | None = None  # the receiver's answer, when it answered
    error: str | None = None  # why it did not count as delivered
    duration_ms: float | None = None


# Attempts kept in a delivery's log (the oldest go first).
MAX_LOGGED_ATTEMPTS = 50


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One callback POST for one finished task, retried under one id until delivered or given up."""

    id: str  # the Standard Webhooks message id, the same on every retry
    task_id: str
    url: str
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    next_attempt_at: float = 0.0  # unix time
    last_error: str | None = None
    # Every attempt, across redeliveries (each redelivery has a new id; see AttemptRecord.webhook_id).
    log: tuple[AttemptRecord, ...] = ()
    # The task's traceparent: each attempt is a span of the task's trace.
    traceparent: str | None = None


def new_delivery(task_id: str, url: str, now: float, traceparent: str | None = None) -> Delivery:
    return Delivery(
        id=f"msg_{uuid.uuid4().hex}", task_id=task_id, url=url, next_attempt_at=now, traceparent=traceparent
    )


def redelivery(previous: Delivery, now: float) -> Delivery:
    """The final event sent again on request: a new delivery (a new webhook-id, since receivers deduplicate on it),
    keeping the earlier attempts in its log."""
    fresh = new_delivery(previous.task_id, previous.url, now, previous.traceparent)
    return msgspec.structs.replace(fresh, log=previous.log)


def delivery_for(task: Task, now: float) -> Delivery | None:
    """The callback delivery a task's new state calls for: one when it has just finished and has a callback_url."""
    if task.status.is_terminal and task.params.callback_url:
        return new_delivery(task.id, task.params.callback_url, now, task.traceparent)
    return None


def backoff_seconds(attempts_made: int, base: float, rng: random.Random | None = None) -> float:
    """Wait before the next try: base * 2^(n-1), +-25% jitter so receivers are not hit in lockstep."""
    jitter: float = (rng or random).uniform(0.75, 1.25)
    return float(base * 2 ** (attempts_made - 1) * jitter)


def after_attempt(
    delivery: Delivery,
    *,
    delivered: bool,
    retryable: bool,
    error: str | None,
    now: float,
    max_attempts: int,
    backoff_base: float,
    rng: random.Random | None = None,
    http_status: int | None = None,
    duration_ms: float | None = None,
) -> Delivery:
    """The delivery after one more try: delivered, rescheduled, or failed for good; the try is logged."""
    attempts = delivery.attempts + 1
    record = AttemptRecord(
        at=now, webhook_id=delivery.id, http_status=http_status, error=error, duration_ms=duration_ms
    )
    delivery = msgspec.structs.replace(delivery, log=(*delivery.log, record)[-MAX_LOGGED_ATTEMPTS:])
    if delivered:
        return msgspec.structs.replace(delivery, status=DeliveryStatus.DELIVERED, attempts=attempts, last_error=None)
    if retryable and attempts < max_attempts:
        return msgspec.structs.replace(
            delivery,
            attempts=attempts,
            last_error=error,
            next_attempt_at=now + backoff_seconds(attempts, backoff_base, rng),
        )
    return msgspec.structs.replace(delivery, status=DeliveryStatus.FAILED, attempts=attempts, last_error=error)
