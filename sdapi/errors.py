"""The error tree of sdapi, split by what happens next: a request refused (the client must change it), a task
cancelled, or a part of the service failing (retried where that can help). A task's own failure (GenerationFailed)
sits with the service's errors but may be the client's doing: its error_code says which (invalid_input,
out_of_memory for the size asked, or a fault). The codes in the tree are what api/errors.py (the one table that
knows HTTP) answers each with; nothing in this module knows HTTP.

SdapiError
├── RequestError            the client must change something: answered 4xx, never retried as is
│   ├── InvalidParameter            400  a request that parsed but cannot be served
│   ├── AuthenticationFailed        401
│   ├── TaskNotFound                404
│   ├── ModelNotFound               404  a dialect's unknown model (OpenAI's model_not_found)
│   ├── TaskAlreadyFinished         409  cancelling a task that already ended
│   ├── IdempotencyKeyReused        409  an Idempotency-Key sent again with a different body
│   ├── NoCallback                  404  the delivery log of a task without a callback
│   ├── DeliveryInProgress          409  a redelivery while the callback is still being delivered
│   ├── RequestTooLarge             413
│   ├── ClientDisconnected          499  the client left mid-body (logged at INFO: nothing went wrong here)
│   ├── RequestValidationFailed     422  the body does not match the schema
│   └── QueueFull                   429  with Retry-After
├── TaskCancelled           a client cancelled the task: its run stops between denoising steps
└── ServiceError            the service (or its operator) must act: retried where that can help, else alerted
    ├── ConfigError                 the service refuses to start
    ├── ModelLoadFailed             tasks fail with the reason until the model loads
    ├── GenerationFailed            one task fails with a user-safe message and error code; the worker goes on
    ├── StorageError                uploads are retried, then the task fails
    ├── TaskStoreError              the task database failed (500); callers retry
    │   └── StoreUnavailable        503 with Retry-After: unreachable, restarting, locked; nodes reconnect
    └── InvalidTransition           a bug: a task was asked to move where its status does not allow

Vendor exceptions (sqlite3, psycopg, minio/urllib3, httpx, torch, onnxruntime, Pillow) are translated into these
inside the one module that talks to each vendor; nothing above those modules catches a vendor exception, except the
AUTOMATIC1111 dialect, which resizes an init image itself (its resize modes) and turns Pillow's errors into a 422.
"""

from __future__ import annotations

import enum

# The contract's 404 message for an unknown task (also for another key's task under per-key isolation).
TASK_NOT_FOUND_MESSAGE = "任务不存在"
# The message of a generation that failed for a reason the client should not see (the traceback goes to the log).
GENERIC_GENERATION_FAILURE = "生成过程中发生错误"


class ErrorCode(enum.StrEnum):
    """The machine-readable `error_code` of a failed task (beside its human `error_message`); clients branch on it."""

    CANCELLED = "cancelled"  # cancelled by a client
    OUT_OF_MEMORY = "out_of_memory"  # the device ran out of memory: fewer or smaller images may fit
    STORAGE_UNAVAILABLE = "storage_unavailable"  # the images could not be stored (retried first)
    MODEL_NOT_LOADED = "model_not_loaded"  # the worker's model failed to load
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"  # its runs kept being cut short (crashes), queue.max_attempts times
    INVALID_INPUT = "invalid_input"  # the request could not be served, found only at run time
    INTERNAL = "internal"  # anything else (the details are in the service's log)


class SdapiError(Exception):
    """Base of every error sdapi raises on purpose. `message` is safe to show to a client; `error_code` is what a
    task that fails with it reports."""

    error_code = ErrorCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RequestError(SdapiError):
    """The request is wrong or not allowed now; the client must change it (or wait, for QueueFull)."""

    error_code = ErrorCode.INVALID_INPUT


class ServiceError(SdapiError):
    """Something in the service or its infrastructure failed; not the client's fault."""


class AuthenticationFailed(RequestError):
    """The API key is missing or unknown."""


class TaskNotFound(RequestError):
    """No task has the requested id."""


class ModelNotFound(RequestError):
    """A dialect named a model this service does not serve (OpenAI answers it with 404 and `model_not_found`; the
    native API refuses an unknown `model` as an InvalidParameter)."""

    field = "model"


class TaskAlreadyFinished(RequestError):
    """The task has already ended, so it cannot be cancelled (409)."""


class IdempotencyKeyReused(RequestError):
    """An Idempotency-Key already used for a different request (409)."""


class NoCallback(RequestError):
    """The task has no callback delivery (no callback_url, or not ended yet): 404."""


class DeliveryInProgress(RequestError):
    """A redelivery was asked for while the callback is still being delivered (409)."""


class InvalidParameter(RequestError):
    """A request parsed but cannot be served (unknown scheduler, bad image, size beyond limits...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class RequestValidationFailed(RequestError):
    """The request body does not match the schema (the seed's 422 with loc/msg/type entries)."""

    def __init__(self, errors: list[dict[str, object]]) -> None:
        super().__init__("请求参数验证失败")
        self.errors = errors


class RequestTooLarge(RequestError):
    """The request body is larger than limits.max_request_bytes."""

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(
            f"请求体过大：上限 {limit_bytes} 字节（{limit_bytes / 2**20:.1f} MiB，limits.max_request_bytes）"
        )
        self.limit_bytes = limit_bytes


class ClientDisconnected(RequestError):
    """The client went away before its request body arrived: nothing was done, and nobody reads the answer."""


class QueueFull(RequestError):
    """Too many tasks are pending; the client should retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConfigError(ServiceError):
    """The configuration file or environment is wrong; the service refuses to start."""


class InvalidTransition(ServiceError):
    """A task was asked to move to a status its current status does not allow (a bug, never the client's)."""


class GenerationFailed(ServiceError):
    """The engine could not make the images for this task (out of memory, a LoRA that no longer applies...).

    The task fails with `message` and `code` (internal unless the cause is known), the worker goes on.
    """

    def __init__(self, message: str, code: ErrorCode = ErrorCode.INTERNAL) -> None:
        super().__init__(message)
        self.error_code = code


class SkipCurrentImage(Exception):
    """A client asked to skip the running task's current image (A1111's skip): raised by the step callback, caught
    by the engine's step reporter, which ends that pipeline call early (its images come out as far as they got) and
    goes on with the next."""


class TaskCancelled(SdapiError):
    """A client cancelled the task: raised between denoising steps to stop the run."""

    error_code = ErrorCode.CANCELLED


class ModelLoadFailed(ServiceError):
    """The model could not be loaded (missing path, unreadable checkpoint...)."""

    error_code = ErrorCode.MODEL_NOT_LOADED


class StorageError(ServiceError):
    """The image storage could not store or serve an image. An infrastructure failure: retried."""

    error_code = ErrorCode.STORAGE_UNAVAILABLE


class TaskStoreError(ServiceError):
    """The task database failed (a missing table, a corrupt file)."""


class StoreUnavailable(TaskStoreError):
    """The task database cannot be reached for now (down, restarting, connection lost, locked): the client retries
    after a few seconds and nothing was lost."""
