"""The one table from errors to HTTP responses. Bodies are the seed's: {"detail": ...}."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException

from sdapi.errors import (
    AuthenticationFailed,
    ClientDisconnected,
    DeliveryInProgress,
    IdempotencyKeyReused,
    InvalidParameter,
    ModelNotFound,
    NoCallback,
    QueueFull,
    RequestError,
    RequestTooLarge,
    RequestValidationFailed,
    SdapiError,
    StoreUnavailable,
    TaskAlreadyFinished,
    TaskNotFound,
)

logger = logging.getLogger(__name__)

INTERNAL_ERROR_DETAIL = "服务器内部错误"
STORE_UNAVAILABLE_DETAIL = "任务数据库暂时不可用，请稍后重试"
# Retry-After of a 503 while the task database is unreachable: nodes reconnect within a few seconds of its return.
STORE_RETRY_AFTER_SECONDS = 5

# Looked up along the exception's class tree (most specific first): any other RequestError is the client's 400;
# a store failure is a 503 to retry; any other ServiceError (or anything else) is a 500 whose message stays in
# the log.
STATUS_BY_ERROR: dict[type[SdapiError], int] = {
    InvalidParameter: 400,
    AuthenticationFailed: 401,
    TaskNotFound: 404,
    ModelNotFound: 404,
    TaskAlreadyFinished: 409,
    IdempotencyKeyReused: 409,
    NoCallback: 404,
    DeliveryInProgress: 409,
    RequestTooLarge: 413,
    # nginx's code for a client that closed the request: no client receives it.
    ClientDisconnected: 499,
    RequestValidationFailed: 422,
    QueueFull: 429,
    RequestError: 400,
    # The database is down or restarting: the client retries; nothing was stored (or it was, and stays).
    StoreUnavailable: 503,
}


def status_for(error: SdapiError) -> int:
    for cls in type(error).__mro__:
        if issubclass(cls, SdapiError) and cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def handle_sdapi_error(request: Request[Any, Any, Any], error: SdapiError) -> Response[object]:
    status = status_for(error)
    headers: dict[str, str] = {}
    content: object = {"detail": error.message}
    if isinstance(error, RequestValidationFailed):
        content = {"detail": error.errors}
    elif isinstance(error, QueueFull):
        headers["Retry-After"] = str(error.retry_after)
    elif isinstance(error, AuthenticationFailed):
        headers["WWW-Authenticate"] = "APIKey"
    elif isinstance(error, ClientDisconnected):
        logger.info("%s %s: the client disconnected before its body arrived", request.method, request.url.path)
    elif isinstance(error, StoreUnavailable):
        logger.error("%s %s: %s", request.method, request.url.path, error.message)
        headers["Retry-After"] = str(STORE_RETRY_AFTER_SECONDS)
        content = {"detail": STORE_UNAVAILABLE_DETAIL}
    if status == 500:
        logger.error("%s %s failed: %s", request.method, request.url.path, error.message)
        content = {"detail": INTERNAL_ERROR_DETAIL}
    return Response(content, status_code=status, headers=headers)


def handle_http_exception(request: Request[Any, Any, Any], error: HTTPException) -> Response[object]:
    """Litestar's own errors (unknown route, wrong method) in the seed's shape."""
    if error.status_code >= 500:
        logger.error("%s %s failed: %s", request.method, request.url.path, error.detail)
        return Response({"detail": INTERNAL_ERROR_DETAIL}, status_code=error.status_code)
    return Response({"detail": error.detail}, status_code=error.status_code, headers=error.headers or {})


def log_unexpected(request: Request[Any, Any, Any], error: Exception) -> None:
    """Log a real fault with its traceback (never sent to the client)."""
    logger.error("%s %s failed", request.method, request.url.path, exc_info=error)


def handle_unexpected(request: Request[Any, Any, Any], error: Exception) -> Response[object]:
    """A real fault: logged with its traceback, answered without one."""
    log_unexpected(request, error)
    return Response({"detail": INTERNAL_ERROR_DETAIL}, status_code=500)
