"""API key check for every endpoint but health, docs and images."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from sdapi.errors import AuthenticationFailed

Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], None]


def key_is_valid(provided: str, keys: Sequence[str]) -> bool:
    """Constant-time membership: every configured key is compared, whatever matches first."""
    provided_bytes = provided.encode("utf-8")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(provided_bytes, key.encode("utf-8"))
    return matched


def api_key_guard(keys: Sequence[str], header: str) -> Guard:
    """A Litestar guard that admits requests whose `header` carries one of `keys`. It never logs a key."""
    frozen_keys = tuple(keys)

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        provided = connection.headers.get(header)
        if not provided:
            raise AuthenticationFailed(f"缺少 API Key：请在请求头 {header} 中提供")
        if not key_is_valid(provided, frozen_keys):
            raise AuthenticationFailed("API Key 无效")

    return guard
