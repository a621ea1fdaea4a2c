"""What the compatibility dialects (OpenAI, AUTOMATIC1111) share: run a native request as the caller's task and
wait for its end, cancelling it when the client disconnects or compat.wait_seconds runs out; the one
DialectTaskFailed; and the one classification of sdapi's errors (`classify`) that each dialect renders in its own
shape. Each dialect decodes and encodes its own shapes around this and checks only its own fields; the native
request checks (sdapi.service.admission) decide the rest, and none generates or stores."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from litestar import Request
from litestar.exceptions import HTTPException

from sdapi.api.auth import caller_of
from sdapi.api.errors import status_for
from sdapi.config import Config
from sdapi.core.callers import Caller
from sdapi.core.request import GenerationRequest
from sdapi.errors import (
    AuthenticationFailed,
    ErrorCode,
    QueueFull,
    RequestValidationFailed,
    SdapiError,
    TaskAlreadyFinished,
)
from sdapi.service.extras import Extras
from sdapi.service.status import StatusService
from sdapi.service.tasks import TaskService, TaskView

TIMEOUT_MESSAGE = "等待生成超时（compat.wait_seconds），任务已取消"


class DialectTaskFailed(SdapiError):
    """The task ended failed: the dialect answers with its message and error_code, in its own error shape."""

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class CompatTimeout(SdapiError):
    """The dialect's wait ran out; the task was cancelled."""


class ClientGone(SdapiError):
    """The client disconnected while waiting; its task was cancelled (nobody receives this answer)."""


def framework_error_message(error: HTTPException) -> tuple[str, str | None]:
    """The message and field of an error Litestar raised before the handler ran. Its detail alone is only
    "Validation failed for POST /path"; the reason ("Expected `str` of length >= 1") and the field are in `extra`."""
    extra = error.extra if isinstance(error.extra, list) else []
    first = extra[0] if extra and isinstance(extra[0], dict) else {}
    reason, field = first.get("message"), first.get("key")
    if not isinstance(reason, str):
        return str(error.detail), None
    field = field if isinstance(field, str) and field else None
    return (f"{field}: {reason}" if field else reason), field


def service_of(request: Request[Any, Any, Any]) -> TaskService:
    service: TaskService = request.app.state.service
    return service


def status_of(request: Request[Any, Any, Any]) -> StatusService:
    status: StatusService = request.app.state.status
    return status


def extras_of(request: Request[Any, Any, Any]) -> Extras:
    extras: Extras = request.app.state.extras
    return extras


def config_of(request: Request[Any, Any, Any]) -> Config:
    """The typed config the app was created with (handed down once, read here)."""
    config: Config = request.app.state.config
    return config


def base_url_of(request: Request[Any, Any, Any]) -> str:
    return str(request.base_url).rstrip("/")


async def submit_and_wait(request: Request[Any, Any, Any], native: GenerationRequest, dialect: str) -> TaskView:
    """Submit `native` as the caller's task (through `dialect`) and return it once ended (completed or failed,
    cancelled included).
    Raise ClientGone when the client disconnects first and CompatTimeout past compat.wait_seconds: both cancel it."""
    service, caller, base_url = service_of(request), caller_of(request), base_url_of(request)
    task = await service.submit(native, base_url, caller, dialect=dialect)
    waiting = asyncio.ensure_future(service.wait(task.id, config_of(request).compat.wait_seconds, base_url, caller))
    gone = asyncio.ensure_future(_client_gone(request))
    await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
    if not waiting.done():  # the client disconnected: nobody will read the images, so stop making them
        waiting.cancel()
        await cancel_quietly(service, task.id, base_url, caller)
        raise ClientGone("客户端已断开，任务已取消")
    gone.cancel()
    view = waiting.result()
    if not view.task.status.is_terminal:
        await cancel_quietly(service, task.id, base_url, caller)
        raise CompatTimeout(TIMEOUT_MESSAGE)
    return view


async def _client_gone(request: Request[Any, Any, Any]) -> None:
    """Return when the client disconnects (its body has been read: the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def cancel_quietly(service: TaskService, task_id: str, base_url: str, caller: Caller) -> None:
    with contextlib.suppress(TaskAlreadyFinished):  # it ended meanwhile: nothing to stop
        await service.cancel(task_id, base_url, caller)


@dataclass(frozen=True)
class DialectError:
    """An sdapi error as every dialect classifies it; each dialect renders it in its own shape and status codes."""

    # client_gone | timeout | task_failed | server | validation | unauthorized | refused (any other 4xx)
    kind: str
    # The sdapi error's class name (A1111 answers it as "error", OpenAI as "code").
    name: str
    # The native API's status for it (sdapi.api.errors), which a dialect may adjust (A1111 answers 422 for 400).
    status: int
    message: str
    # The request field it names, when it names one.
    field: str | None = None
    # A failed task's error_code.
    code: ErrorCode | None = None
    # Seconds to wait before retrying (a full queue, a key over its rate).
    retry_after: int | None = None


def classify(error: SdapiError) -> DialectError:
    """The one map from sdapi's errors to what a dialect answers, shared by OpenAI's and A1111's handlers."""
    if isinstance(error, ClientGone):
        return DialectError("client_gone", type(error).__name__, 499, error.message)
    if isinstance(error, CompatTimeout):
        return DialectError("timeout", type(error).__name__, 504, error.message)
    if isinstance(error, DialectTaskFailed):
        return DialectError("task_failed", type(error).__name__, 500, error.message, code=error.code)
    status, name = status_for(error), type(error).__name__
    if status >= 500:
        return DialectError("server", name, status, "服务器内部错误" if status == 500 else error.message)
    if isinstance(error, RequestValidationFailed):
        first = error.errors[0] if error.errors else {}
        location = first.get("loc")
        field = str(location[-1]) if isinstance(location, list) and location else None
        return DialectError("validation", name, status, str(first.get("msg", error.message)), field)
    if isinstance(error, AuthenticationFailed):
        return DialectError("unauthorized", name, 401, error.message)
    retry_after = error.retry_after if isinstance(error, QueueFull) else None
    return DialectError("refused", name, status, error.message, getattr(error, "field", None), retry_after=retry_after)
