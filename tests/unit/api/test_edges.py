"""The HTTP layer's small rules: the seed's 422 shape, finding the caller of a key, the one error table."""

from __future__ import annotations

import msgspec
import pytest

from sdapi.api.auth import find_caller
from sdapi.api.errors import status_for
from sdapi.api.validation import describe
from sdapi.core.callers import Caller
from sdapi.core.params import GenerationRequest
from sdapi.errors import GenerationFailed, InvalidParameter, QueueFull, RequestValidationFailed, TaskNotFound


def _describe(raw):
    with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)) as raised:
        msgspec.json.decode(raw, type=GenerationRequest)
    return describe(raised.value)


def test_describe_maps_msgspec_errors_to_the_seed_shape():
    assert _describe(b"{}") == {"loc": ["body", "prompt"], "msg": "field required", "type": "value_error.missing"}
    assert _describe(b'{"prompt":"a","seed":-2}')["type"] == "value_error.number.not_ge"
    assert _describe(b'{"prompt":"a","x":1}')["loc"] == ["body", "x"]
    assert _describe(b"{")["type"] == "value_error.jsondecode"


def test_key_comparison_finds_the_caller_of_a_key():
    a, b = Caller(name="a"), Caller(name="b", admin=True)
    assert find_caller("b", {"a": a, "b": b}) is b
    assert find_caller("", {"a": a}) is None and find_caller("ab", {"a": a, "b": b}) is None
    assert find_caller("a", {}) is None
    assert find_caller("ключ", {"ключ": a}) is a


def test_error_table():
    assert status_for(InvalidParameter("f", "m")) == 400
    assert status_for(TaskNotFound("m")) == 404
    assert status_for(RequestValidationFailed([])) == 422
    assert status_for(QueueFull("m", 1)) == 429
    assert status_for(GenerationFailed("m")) == 500
