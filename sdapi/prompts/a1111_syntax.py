"""AUTOMATIC1111's attention syntax, parsed as its prompt_parser reads it (from its wiki and source):

- `(text)` multiplies the attention to text by 1.1, `((text))` by 1.1², `[text]` divides it by 1.1;
- `(text:1.3)` multiplies it by 1.3 (a number right before the closing bracket);
- `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are the characters themselves; a bracket left open applies to the rest;
- `BREAK` (a word of its own, capitals) ends the current 75-token chunk: what follows starts a new one.

The result is a list of (text, weight) pieces, neighbours of equal weight merged, with BREAK_MARK pieces where a
chunk must end. Prompt editing (`[from:to:when]`) and alternation (`[a|b]`) are schedules over the steps,
resolved into one text per stretch of steps before this runs (sdapi.prompts.schedules).
"""

from __future__ import annotations

import math
import re

from sdapi.prompts import PromptSyntaxError

ROUND = 1.1
SQUARE = 1 / 1.1
# The piece that ends a chunk (A1111's ["BREAK", -1]).
BREAK_MARK = ("BREAK", -1.0)

_TOKEN = re.compile(
    r"""
    \\\( | \\\) | \\\[ | \\\] | \\\\ | \\   # escapes, and a lone backslash
    | \(                                    # an opening round bracket
    | \[                                    # an opening square bracket
    | :\s*([+-]?[.\d]+)\s*\)                # a weight, closing a round bracket
    | \)                                    # a closing round bracket
    | \]                                    # a closing square bracket
    | [^\\()\[\]:]+                         # plain text
    | :                                     # a colon that is no weight
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_ESCAPES = {"\\(": "(", "\\)": ")", "\\[": "[", "\\]": "]", "\\\\": "\\"}


def parse(text: str) -> list[tuple[str, float]]:
    """`text` as (piece, weight) pairs, in order."""
    pieces: list[list[object]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] = float(piece[1]) * factor  # type: ignore[arg-type]

    for match in _TOKEN.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token in _ESCAPES:
            pieces.append([_ESCAPES[token], 1.0])
        elif token == "(":
            round_open.append(len(pieces))
        elif token == "[":
            square_open.append(len(pieces))
        elif weight is not None and round_open:
            multiply(round_open.pop(), _weight(token, weight))
        elif token == ")" and round_open:
            multiply(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            multiply(square_open.pop(), SQUARE)
        else:
            for index, part in enumerate(_BREAK.split(token)):
                if index > 0:
                    pieces.append(list(BREAK_MARK))
                pieces.append([part, 1.0])
    for start in round_open:
        multiply(start, ROUND)
    for start in square_open:
        multiply(start, SQUARE)
    if not pieces:
        return [("", 1.0)]
    merged: list[tuple[str, float]] = []
    for piece in pieces:
        text_part, piece_weight = str(piece[0]), float(piece[1])  # type: ignore[arg-type]
        if (
            merged
            and merged[-1][1] == piece_weight
            and (text_part, piece_weight) != BREAK_MARK
            and (merged[-1] != BREAK_MARK)
        ):
            merged[-1] = (merged[-1][0] + text_part, piece_weight)
        else:
            merged.append((text_part, piece_weight))
    return merged


def _weight(token: str, written: str) -> float:
    try:
        value = float(written)
    except ValueError:
        raise PromptSyntaxError(f"权重无效：{token.strip()[:40]}") from None
    if not math.isfinite(value):
        raise PromptSyntaxError(f"权重必须是有限的数：{token.strip()[:40]}")
    return value


def uses_syntax(text: str) -> bool:
    """Whether `text` holds anything the parser reads differently from plain text (brackets, escapes, BREAK)."""
    return any(character in text for character in "()[]\\") or _BREAK.search(text) is not None
