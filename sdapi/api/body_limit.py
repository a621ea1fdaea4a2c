"""The request body limit (limits.max_request_bytes), answered with a 413 the client can read, and the one place that
notices a client leaving before its body has arrived (ClientDisconnected: logged at INFO, not as a server fault).

A server that stops reading an oversized upload and answers at once makes most clients see a connection reset
rather than the answer (they are still sending). So the rest of an oversized body is read and thrown away, up to
DRAIN_FACTOR times the limit, before RequestTooLarge becomes the 413; past that the connection is closed.
"""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

from sdapi.errors import ClientDisconnected, RequestTooLarge

DRAIN_FACTOR = 4


def body_limit_middleware(limit: int) -> type:
    """An ASGI middleware class (Litestar's `middleware=`) that refuses bodies over `limit` bytes."""

    class BodyLimit:
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await self.app(scope, receive, send)
                return
            declared = _content_length(scope)
            if declared is not None and declared > limit:
                await _drain(receive, limit * DRAIN_FACTOR)
                raise RequestTooLarge(limit)
            await self.app(scope, _counting(receive, limit), send)

    return BodyLimit


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # Litestar answers a malformed length with its own 400
    return None


def _counting(receive: Receive, limit: int) -> Receive:
    """`receive` that raises RequestTooLarge once a body without a (truthful) Content-Length passes `limit`, and
    ClientDisconnected when the client leaves before its body is complete (a disconnect after it is the dialects'
    to notice: a client that stopped waiting)."""
    seen = 0
    complete = False

    async def wrapped() -> ReceiveMessage:
        nonlocal seen, complete
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                if message.get("more_body", False):
                    await _drain(receive, limit * DRAIN_FACTOR)
                raise RequestTooLarge(limit)
            complete = not message.get("more_body", False)
        elif message["type"] == "http.disconnect" and not complete:
            raise ClientDisconnected("客户端在请求体发送完之前断开")
        return message

    return wrapped


async def _drain(receive: Receive, budget: int) -> None:
    """Read and drop the rest of the body, at most `budget` bytes."""
    drained = 0
    while drained <= budget:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return
