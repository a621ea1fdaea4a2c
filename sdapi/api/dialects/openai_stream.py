"""OpenAI's image streaming (`stream: true`, `partial_images` 0-3) on the native task pipeline: the task is submitted
as the caller's (a refusal is an ordinary OpenAI error before any event), drawn with live previews at a cadence that
gives `partial_images` of them (sdapi.previews), and answered as Server-Sent Events in OpenAI's names:
`image_generation.partial_image` (or `image_edit.partial_image`) for each preview, up to `partial_images`, then one
`image_generation.completed` (`image_edit.completed`) per image, or an `error` event, which the `openai` SDK raises.

A partial image is the live preview: the predicted final image at that step, at most previews.max_side pixels on its
longest side (its own `size` says which), in the request's output_format. The completed images are the task's
stored images, the same bytes a request without `stream` gets for the same seed.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Request
from litestar.response import ServerSentEvent, ServerSentEventMessage

from sdapi.api.auth import caller_of
from sdapi.api.dialects.common import (
    TIMEOUT_MESSAGE,
    base_url_of,
    cancel_quietly,
    config_of,
    service_of,
    status_of,
)
from sdapi.core.request import GenerationRequest
from sdapi.core.tasks import TaskStatus
from sdapi.previews.encoding import reencoded_base64

# OpenAI's token counts: sdapi counts no tokens; the fields are there for clients that read them.
NO_USAGE = {
    "total_tokens": 0,
    "input_tokens": 0,
    "output_tokens": 0,
    "input_tokens_details": {"text_tokens": 0, "image_tokens": 0},
}


def with_partial_images(request: Request[Any, Any, Any], native: GenerationRequest, partials: int) -> GenerationRequest:
    """`native` drawing previews at a cadence that gives about `partials + 1` of them over its denoising steps
    (the last is the final picture's, which the completed event brings): none for 0."""
    if partials == 0:
        return msgspec.structs.replace(native, preview_every_steps=0)
    steps = native.num_inference_steps or status_of(request).catalog.default_steps(native.model)
    if native.init_image is not None and native.strength is not None:
        steps = max(int(steps * native.strength), 1)
    return msgspec.structs.replace(native, preview_every_steps=max(steps // (partials + 1), 1))


async def streamed(
    request: Request[Any, Any, Any], native: GenerationRequest, body: Any, event_prefix: str
) -> ServerSentEvent:
    """Submit `native` now (refusals raise here, as errors in OpenAI's shape) and answer its events as a stream."""
    service, caller, base_url = service_of(request), caller_of(request), base_url_of(request)
    task = await service.submit(native, base_url, caller, dialect="openai")
    wait_seconds = config_of(request).compat.wait_seconds
    partials = body.partial_images or 0
    common = {
        "background": body.background if body.background in ("transparent", "opaque") else "opaque",
        "quality": body.quality or "auto",
        "output_format": body.output_format,
    }

    async def events() -> AsyncIterator[ServerSentEventMessage]:
        sent = 0
        view = None
        try:
            async with asyncio.timeout(wait_seconds):
                async for _event, latest, preview in service.events(task.id, base_url, caller):
                    view = latest
                    if preview is not None and sent < partials:
                        data = await asyncio.to_thread(reencoded_base64, preview, body.output_format)
                        yield _message(
                            f"{event_prefix}.partial_image",
                            {
                                "b64_json": data,
                                "created_at": int(time.time()),
                                "size": f"{preview.width}x{preview.height}",
                                "partial_image_index": sent,
                                **common,
                            },
                        )
                        sent += 1
        except TimeoutError:
            yield _error(TIMEOUT_MESSAGE, "timeout")
            return
        finally:
            if view is None or not view.task.status.is_terminal:  # timed out, or the client left: stop the task
                await cancel_quietly(service, task.id, base_url, caller)
        assert view is not None  # the stream's first event is the task as it was read
        if view.task.status is not TaskStatus.COMPLETED:
            yield _error(view.task.error_message or "生成失败", view.task.error_code)
            return
        size = f"{view.task.params.width}x{view.task.params.height}"
        if view.task.images:
            size = f"{view.task.images[0].width}x{view.task.images[0].height}"
        for raw in await service.image_bytes(view):
            yield _message(
                f"{event_prefix}.completed",
                {
                    "b64_json": base64.b64encode(raw).decode("ascii"),
                    "created_at": int(time.time()),
                    "size": size,
                    "usage": NO_USAGE,
                    **common,
                },
            )

    return ServerSentEvent(events())


def _message(kind: str, fields: dict[str, Any]) -> ServerSentEventMessage:
    return ServerSentEventMessage(event=kind, data=msgspec.json.encode({"type": kind, **fields}).decode())


def _error(message: str, code: Any) -> ServerSentEventMessage:
    code_name = None if code is None else getattr(code, "value", str(code))
    error = {"message": message, "type": "server_error", "param": None, "code": code_name}
    return ServerSentEventMessage(event="error", data=msgspec.json.encode({"type": "error", "error": error}).decode())
