"""API key check for every endpoint but health, docs and images."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from sdapi.callers import Caller
from sdapi.errors import AuthenticationFailed

Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], None]


def find_caller(provided: str, callers: Mapping[str, Caller]) -> Caller | None:
    """The caller of a key, compared in constant time against every configured key, whatever matches first."""
    provided_bytes = provided.encode("utf-8")
    found: Caller | None = None
    for key, caller in callers.items():
        if hmac.compare_digest(provided_bytes, key.encode("utf-8")):
            found = caller
    return found


def api_key_guard(callers: Mapping[str, Caller], header: str, bearer: bool = False) -> Guard:
    """A Litestar guard that admits requests whose `header` (or, with `bearer`, `Authorization: Bearer`, as
    OpenAI's clients send it) carries a configured key and records who the caller is (`caller_of(connection)`).
    It never logs a key."""
    frozen = dict(callers)
    where = f"Authorization: Bearer <key> 或请求头 {header}" if bearer else f"请求头 {header}"

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        provided = connection.headers.get(header)
        scheme, _space, token = connection.headers.get("Authorization", "").partition(" ")
        if bearer and scheme.lower() == "bearer" and token.strip():
            provided = token.strip()
        if not provided:
            raise AuthenticationFailed(f"缺少 API Key：请在{where}中提供")
        caller = find_caller(provided, frozen)
        if caller is None:
            raise AuthenticationFailed("API Key 无效")
        connection.state.caller = caller

    return guard


def caller_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Caller:
    """Who the guard found this request's key to be."""
    caller: Caller = connection.state.caller
    return caller
