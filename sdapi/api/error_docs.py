"""The error statuses an operation documents in /openapi.json, each in the body shape of the dialect that answers it.

Litestar documents a 400 of its own shape ({"status_code", "detail", "extra"}) on every operation with
parameters, while sdapi's handlers answer in each dialect's shape: the native API `{"detail": ...}`, OpenAI
`{"error": {...}}`, AUTOMATIC1111 `{"error", "detail", "body", "errors"}`. The routes declare their statuses
through `error_responses`, which overrides Litestar's and keeps one description per status across the service.
The schemathesis run in the suite (tests/integration/test_openapi_conformance.py) fails on any status or body
the document does not describe.
"""

from __future__ import annotations

from litestar.openapi.datastructures import ResponseSpec

DESCRIPTIONS = {
    400: "请求参数错误",
    401: "认证失败（API Key无效或缺失）",
    404: "任务不存在",
    409: "冲突（任务已结束，或回调仍在投递中）",
    413: "请求体过大（上限见 limits.max_request_bytes）",
    422: "参数验证失败",
    429: "任务队列已满，稍后重试（见 Retry-After）",
    500: "服务器内部错误",
    503: "任务数据库暂时不可用，稍后重试（见 Retry-After）",
    504: "等待生成超时（compat.wait_seconds），任务已取消",
}


def error_responses(body: type, *statuses: int, **described: str) -> dict[int, ResponseSpec]:
    """ResponseSpecs for `statuses` with `body` as their schema; `described` ("s404": "...") overrides a
    status's description where an operation's reason is more specific."""
    return {
        status: ResponseSpec(body, description=described.get(f"s{status}", DESCRIPTIONS[status])) for status in statuses
    }
