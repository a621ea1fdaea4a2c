"""X-Request-ID on every HTTP request: taken from the request when it carries a plausible one, else generated; set
for the request's log lines (and recorded on the tasks it creates) and echoed in the response.

Two halves, because Litestar runs route middleware inside its error handling: the middleware sets the id before the
handler runs; the app's before-send hook writes it into every response, error responses and 404s included."""

from __future__ import annotations

from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from sdapi.observability import tracing
from sdapi.observability.logs import REQUEST_ID_HEADER, request_context, request_id_from

_HEADER = REQUEST_ID_HEADER.lower().encode("ascii")
_TRACEPARENT = b"traceparent"
_STATE_KEY = "sdapi_request_id"


def _request_id(scope: Scope) -> str:
    state: dict[str, Any] = scope.setdefault("state", {})
    if _STATE_KEY not in state:
        sent = next((value for name, value in scope["headers"] if name == _HEADER), b"")
        state[_STATE_KEY] = request_id_from(sent.decode("latin-1"))
    request_id: str = state[_STATE_KEY]
    return request_id


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """Route middleware: the request's log lines (and the tasks it creates) carry its id, and the request is a span
    (continuing the client's trace when it sends a `traceparent`; the tasks it creates carry the trace on)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        sent = next((value for name, value in scope["headers"] if name == _TRACEPARENT), b"")
        name = f"{scope['method']} {scope['path']}"
        request_id = _request_id(scope)
        with request_context(request_id), tracing.server_span(name, sent.decode("latin-1") or None, request=request_id):
            await app(scope, receive, send)

    return middleware


async def echo_request_id(message: Message, scope: Scope) -> None:
    """Before-send hook: the response carries the request's id."""
    if message["type"] == "http.response.start" and scope["type"] == ScopeType.HTTP:
        headers = [(name, value) for name, value in message.get("headers", []) if name.lower() != _HEADER]
        headers.append((_HEADER, _request_id(scope).encode("ascii")))
        message["headers"] = headers
