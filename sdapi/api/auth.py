"""API key check for every endpoint but health, docs and images."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable, Mapping
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from sdapi.core.callers import Caller
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


def api_key_guard(callers: Mapping[str, Caller], header: str, bearer: bool = False, basic: bool = False) -> Guard:
    """A Litestar guard that admits requests whose `header` carries a configured key and records who the caller
    is (`caller_of(connection)`). With `bearer` it also reads `Authorization: Bearer <key>` (OpenAI's clients);
    with `basic`, HTTP Basic with any user name and the key as password (AUTOMATIC1111's `--api-auth` clients).
    It never logs a key."""
    frozen = dict(callers)
    schemes = [f"请求头 {header}"]
    if bearer:
        schemes.insert(0, "Authorization: Bearer <key>")
    if basic:
        schemes.insert(0, "HTTP Basic（任意用户名，Key 作为密码）")
    where = " 或 ".join(schemes)

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        provided = connection.headers.get(header)
        scheme, _space, token = connection.headers.get("Authorization", "").partition(" ")
        if bearer and scheme.lower() == "bearer" and token.strip():
            provided = token.strip()
        if basic and scheme.lower() == "basic" and token.strip():
            provided = _basic_password(token.strip())
            if provided is None:
                raise AuthenticationFailed("HTTP Basic 凭据无法解析：应为 base64 编码的 用户名:密码")
        if not provided:
            raise AuthenticationFailed(f"缺少 API Key：请在{where}中提供")
        caller = find_caller(provided, frozen)
        if caller is None:
            raise AuthenticationFailed("API Key 无效")
        connection.state.caller = caller

    return guard


def _basic_password(credentials: str) -> str | None:
    """The password of HTTP Basic credentials ("user:password", base64), or None when they do not decode."""
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _user, colon, password = decoded.partition(":")
    return password if colon else None


def caller_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Caller:
    """Who the guard found this request's key to be."""
    caller: Caller = connection.state.caller
    return caller
