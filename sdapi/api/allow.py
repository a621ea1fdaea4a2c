"""OPTIONS answers with every method its path serves.

Litestar (2.25) creates a path's automatic OPTIONS handler when the path's first handler is registered, and that
handler's Allow header keeps the methods known at that moment: beside GET and DELETE /api/v1/tasks/{task_id},
OPTIONS said `DELETE, OPTIONS`; beside GET and POST /sdapi/v1/options it said `GET, OPTIONS`. The app's route
table knows every method of a path, so this before-send hook rewrites Allow from it."""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.routes import HTTPRoute
from litestar.types import Message, Scope

_ALLOW = b"allow"


def _methods_of(scope: Scope) -> list[str] | None:
    template = scope.get("path_template")
    for route in scope["app"].routes:
        if isinstance(route, HTTPRoute) and route.path_format == template:
            return sorted(route.methods)
    return None


async def complete_allow(message: Message, scope: Scope) -> None:
    """Before-send hook: an OPTIONS answer's Allow lists all of the path's methods."""
    if message["type"] != "http.response.start" or scope["type"] != ScopeType.HTTP or scope["method"] != "OPTIONS":
        return
    headers = message.get("headers", [])
    if not any(name.lower() == _ALLOW for name, _ in headers):
        return
    methods = _methods_of(scope)
    if methods is None:
        return
    message["headers"] = [(name, value) for name, value in headers if name.lower() != _ALLOW] + [
        (_ALLOW, ", ".join(methods).encode("ascii"))
    ]
