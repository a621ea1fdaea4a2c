"""The error tree of sdapi. No HTTP codes here: api/errors.py maps these to responses in one table."""

from __future__ import annotations


class SdapiError(Exception):
    """Base of every error sdapi raises on purpose. `message` is safe to show to a client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(SdapiError):
    """The configuration file or environment is wrong; the service refuses to start."""


class AuthenticationFailed(SdapiError):
    """The API key is missing or unknown."""


class TaskNotFound(SdapiError):
    """No task has the requested id."""


class InvalidParameter(SdapiError):
    """A request parsed but cannot be served (unknown scheduler, bad image, size beyond limits...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class RequestValidationFailed(SdapiError):
    """The request body does not match the schema (the seed's 422 with loc/msg/type entries)."""

    def __init__(self, errors: list[dict[str, object]]) -> None:
        super().__init__("请求参数验证失败")
        self.errors = errors


class QueueFull(SdapiError):
    """Too many tasks are pending; the client should retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidTransition(SdapiError):
    """A task was asked to move to a status its current status does not allow."""


class GenerationFailed(SdapiError):
    """The engine could not make the images for this task (out of memory, bad model output...).

    A user-level failure: the task fails with `message`, the worker goes on.
    """


class ModelLoadFailed(SdapiError):
    """The model could not be loaded (missing path, unreadable checkpoint...)."""


class StorageError(SdapiError):
    """The image storage could not store or serve an image. An infrastructure failure: retried."""


class TaskStoreError(SdapiError):
    """The task database failed (disk full, locked, corrupt)."""
