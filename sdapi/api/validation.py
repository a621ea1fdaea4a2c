"""Strict request-body decoding with errors in the seed's 422 shape: {"detail": [{"loc", "msg", "type"}]}.

It runs as a before_request hook, ahead of Litestar's own decoding of the same type, so the 422 names the
exact field (Litestar's own message loses it for missing and unknown fields).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from itertools import accumulate
from typing import Any

import msgspec
from litestar import Request

from sdapi.errors import RequestValidationFailed

_AT = re.compile(r"^(?P<message>.*) - at `\$(?P<path>[^`]*)`$", re.DOTALL)
_FIELD = re.compile(r"`([^`]*)`")
_BOUND = re.compile(r"Expected `(?P<type>[^`]*)` (?P<op>>=|<=|>|<) (?P<value>\S+)")
_LENGTH = re.compile(r"Expected `(?P<type>[^`]*)` of length (?P<op>>=|<=) (?P<value>\d+)")
_BOUND_WORDS = {
    ">=": ("ensure this value is greater than or equal to {}", "value_error.number.not_ge"),
    "<=": ("ensure this value is less than or equal to {}", "value_error.number.not_le"),
    ">": ("ensure this value is greater than {}", "value_error.number.not_gt"),
    "<": ("ensure this value is less than {}", "value_error.number.not_lt"),
}


def _location(path: str) -> list[str]:
    """`$.a.b[0]` -> ["body", "a", "b", "0"]."""
    parts = [part for part in re.split(r"[.\[\]]", path) if part]
    return ["body", *parts]


def describe(error: msgspec.ValidationError | msgspec.DecodeError) -> dict[str, object]:
    """One seed-style error entry for a msgspec decoding error."""
    text = str(error)
    if not isinstance(error, msgspec.ValidationError):
        return {"loc": ["body"], "msg": f"invalid JSON: {text}", "type": "value_error.jsondecode"}
    match = _AT.match(text)
    message, loc = (match["message"], _location(match["path"])) if match else (text, ["body"])
    if message.startswith("Object missing required field"):
        return {
            "loc": [*loc, _FIELD.findall(message)[0]],
            "msg": "field required",
            "type": "value_error.missing",
        }
    if message.startswith("Object contains unknown field"):
        return {
            "loc": [*loc, _FIELD.findall(message)[0]],
            "msg": "extra fields not permitted",
            "type": "value_error.extra",
        }
    if bound := _LENGTH.match(message):
        kind = "min_length" if bound["op"] == ">=" else "max_length"
        words = "at least" if kind == "min_length" else "at most"
        return {
            "loc": loc,
            "msg": f"ensure this value has {words} {bound['value']} characters",
            "type": f"value_error.any_str.{kind}",
        }
    if bound := _BOUND.match(message):
        words, kind = _BOUND_WORDS[bound["op"]]
        return {"loc": loc, "msg": words.format(bound["value"]), "type": kind}
    if message.startswith("Expected"):
        expected = _FIELD.findall(message)
        kind = f"type_error.{expected[0].split(' ')[0]}" if expected else "type_error"
        return {"loc": loc, "msg": message, "type": kind}
    return {"loc": loc, "msg": message, "type": "value_error"}


# How deep a JSON body may nest. The deepest request schema nests a handful of levels; decoders recurse once per
# level (msgspec raises RecursionError near 1,000), so a deeper body is refused before anything decodes it.
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
_BRACKET_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_depth(body: bytes) -> int:
    """How deep `body`'s arrays and objects nest (brackets inside strings do not count)."""
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(_BRACKET_STEP[byte] for byte in brackets), default=0)


def check_json_depth(body: bytes) -> None:
    """Raise the seed's 422 for a body nested deeper than MAX_JSON_DEPTH. Cheap for the usual body: one with no more
    opening brackets than the limit cannot nest deeper (base64 images have none), and is not scanned."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return
    if json_depth(body) > MAX_JSON_DEPTH:
        raise RequestValidationFailed(
            [
                {
                    "loc": ["body"],
                    "msg": f"JSON nested deeper than {MAX_JSON_DEPTH} levels",
                    "type": "value_error.jsondecode",
                }
            ]
        )


async def refuse_deep_json(request: Request[Any, Any, Any]) -> None:
    """A before_request hook (every route without one of its own): a JSON body nested too deep is a 422 (in the
    route's dialect's shape), never a decoder's RecursionError and a 500."""
    if request.content_type[0] == "application/json":
        check_json_depth(await request.body())


def integral_floats_as_ints(value: Any) -> Any:
    """`512.0` read as `512`, at any depth. JSON does not tell 512 from 512.0 (JSON Schema calls both integers,
    and Python clients send `1024 / 2` as 512.0), so an integer field takes a whole float; a float field takes
    the int as it always did, and a fraction (512.5) is still refused."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [integral_floats_as_ints(item) for item in value]
    if isinstance(value, dict):
        return {key: integral_floats_as_ints(item) for key, item in value.items()}
    return value


def strict_body(
    body_type: type[msgspec.Struct],
) -> Callable[[Request[Any, Any, Any]], Awaitable[None]]:
    """A before_request hook that refuses a body not matching `body_type` with the seed's 422. Strict but for
    whole floats (integral_floats_as_ints); Litestar's own decoding, after this, reads them the same way."""

    async def check(request: Request[Any, Any, Any]) -> None:
        body = await request.body()
        check_json_depth(body)  # before anything recurses through it
        try:
            msgspec.convert(integral_floats_as_ints(msgspec.json.decode(body)), body_type)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            raise RequestValidationFailed([describe(error)]) from None

    return check
