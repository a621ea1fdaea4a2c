"""What the compatibility dialects (OpenAI, AUTOMATIC1111) share: run a native request as the caller's task and
wait for its end, cancelling it when the client disconnects or compat.wait_seconds runs out, and read the bytes of
its images. Each dialect decodes and encodes its own shapes around this; none generates, validates or stores."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from litestar import Request

from sdapi.api.auth import caller_of
from sdapi.bootstrap import Runtime
from sdapi.callers import Caller
from sdapi.errors import SdapiError, TaskAlreadyFinished
from sdapi.request import GenerationRequest
from sdapi.service import TaskService, TaskView

TIMEOUT_MESSAGE = "等待生成超时（compat.wait_seconds），任务已取消"


class CompatTimeout(SdapiError):
    """The dialect's wait ran out; the task was cancelled."""


class ClientGone(SdapiError):
    """The client disconnected while waiting; its task was cancelled (nobody receives this answer)."""


def runtime_of(request: Request[Any, Any, Any]) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def base_url_of(request: Request[Any, Any, Any]) -> str:
    return str(request.base_url).rstrip("/")


async def run_to_end(request: Request[Any, Any, Any], native: GenerationRequest, dialect: str) -> TaskView:
    """Submit `native` as the caller's task (through `dialect`) and return it once ended (completed or failed,
    cancelled included).
    Raise ClientGone when the client disconnects first and CompatTimeout past compat.wait_seconds: both cancel it."""
    runtime = runtime_of(request)
    service, caller, base_url = runtime.service, caller_of(request), base_url_of(request)
    task = await service.submit(native, base_url, caller, dialect=dialect)
    waiting = asyncio.ensure_future(service.wait(task.id, runtime.config.compat.wait_seconds, base_url, caller))
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


async def image_bytes(runtime: Runtime, view: TaskView) -> list[bytes]:
    """The stored bytes of a completed task's images, in order (for dialects that answer with the images)."""
    return [await asyncio.to_thread(runtime.storage.read, key) for key in view.task.result_keys]
