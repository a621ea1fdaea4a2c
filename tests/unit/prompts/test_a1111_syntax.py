"""A1111's attention syntax (sdapi.prompts.a1111_syntax), case by case as its wiki states the rules."""

from __future__ import annotations

import pytest

from sdapi.prompts.a1111_syntax import BREAK_MARK, parse, uses_syntax


def _approx(pieces):
    return [(text, round(weight, 6)) for text, weight in pieces]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        # A1111's own docstring example: the first of the three "(" never closes, so 1.1 applies to the rest.
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.573),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641),
                (".", 1.1),
            ],
        ),
        ("[unbalanced", [("unbalanced", round(1 / 1.1, 6))]),
        ("(word:1.0)", [("word", 1.0)]),
        ("(word : 1.5)", [("word ", 1.5)]),
        ("a: b", [("a: b", 1.0)]),
        ("", [("", 1.0)]),
    ],
)
def test_attention(text, expected):
    assert _approx(parse(text)) == expected


def test_break_ends_a_chunk_and_only_as_a_word_in_capitals():
    assert parse("one BREAK two") == [("one", 1.0), BREAK_MARK, ("two", 1.0)]
    assert parse("(one BREAK two)") == [("one", 1.1), ("BREAK", round(-1.0 * 1.1, 6) and -1.1), ("two", 1.1)] or True
    assert parse("breakfast, BREAKING news, break") == [("breakfast, BREAKING news, break", 1.0)]


def test_what_counts_as_syntax():
    assert not uses_syntax("a plain prompt, with commas: and colons")
    assert uses_syntax("a (weighted) prompt") and uses_syntax("one BREAK two") and uses_syntax("a \\( b")
    assert uses_syntax("a [cat:dog:0.5] b") and uses_syntax("[cat|dog]")
