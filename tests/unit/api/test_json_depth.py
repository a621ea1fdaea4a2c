"""The JSON depth bound every body passes before a decoder recurses through it."""

from __future__ import annotations

import pytest

from sdapi.api.validation import MAX_JSON_DEPTH, check_json_depth, json_depth
from sdapi.errors import RequestValidationFailed


@pytest.mark.parametrize(
    ("body", "depth"),
    [
        (b"{}", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'{"prompt": "[[[[{{{{"}', 1),  # brackets inside a string do not nest
        (b'{"prompt": "a \\" [[[ \\\\"}', 1),  # nor after an escaped quote
        (b"[" * 500 + b"]" * 500, 500),
    ],
)
def test_depth_counts_nesting_outside_strings(body, depth):
    assert json_depth(body) == depth


def test_a_body_at_the_limit_passes_and_one_deeper_is_the_seeds_422():
    check_json_depth(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)
    check_json_depth(b'{"prompt": "' + b"[" * 10_000 + b'"}')  # many brackets, all inside a string
    with pytest.raises(RequestValidationFailed) as refused:
        check_json_depth(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))
    (error,) = refused.value.errors
    assert error["loc"] == ["body"] and error["type"] == "value_error.jsondecode"
