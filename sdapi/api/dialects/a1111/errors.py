"""AUTOMATIC1111's error body, as the OpenAPI document describes it (the routes render it in routes._error)."""

from __future__ import annotations

import msgspec
from litestar.openapi.datastructures import ResponseSpec

from sdapi.api.error_docs import error_responses


class A1111ErrorBody(msgspec.Struct):
    """What A1111's API middleware answers for an error: `errors` repeats `detail`, `body` is empty."""

    error: str
    detail: str
    body: str
    errors: str


def a1111_errors(*statuses: int, **described: str) -> dict[int, ResponseSpec]:
    """An /sdapi/v1 operation's documented errors: 401 and 500 on every one (all sit behind the key)."""
    return error_responses(A1111ErrorBody, *statuses, 401, 500, **described)


# txt2img and img2img: A1111 answers 422 for a request it cannot serve; 504 when the wait for the task runs out.
GENERATION_ERRORS = a1111_errors(413, 422, 429, 503, 504)
