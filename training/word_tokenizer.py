"""A word-level CLIP tokenizer with character fallback, written as ordinary CLIP BPE files (vocab.json,
merges.txt), so the pipeline loads it with transformers' CLIPTokenizer like any Stable Diffusion model.

Every byte is a token (as in the random tiny model, sdapi.families.tiny.write_tokenizer), and each word of
the given vocabulary gets merges that build it into one token: "sunset" is one id, a word the model never saw
falls back to pieces and single characters. Merges of different words can compete (a word's last two letters
may merge first), so after the left-to-right merges every word is tokenized once more and the pieces it still
splits into get merges of their own, until every word is a single token.
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

from sdapi.families.tiny_parts import _bytes_to_unicode

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _symbols(word: str) -> list[str]:
    table = _bytes_to_unicode()
    characters = [table[byte] for byte in word.encode("utf-8")]
    return [*characters[:-1], characters[-1] + "</w>"]


def _apply(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE: merge the lowest-ranked adjacent pair until none is known."""
    while len(symbols) > 1:
        pairs = [(ranks.get(pair), i) for i, pair in enumerate(pairwise(symbols))]
        known = [(rank, i) for rank, i in pairs if rank is not None]
        if not known:
            break
        _, i = min(known)
        symbols = [*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2 :]]
    return symbols


def word_merges(words: list[str]) -> list[tuple[str, str]]:
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}

    def add(pair: tuple[str, str]) -> None:
        if pair not in ranks:
            ranks[pair] = len(merges)
            merges.append(pair)

    for word in words:
        symbols = _symbols(word)
        built = symbols[0]
        for symbol in symbols[1:]:
            add((built, symbol))
            built += symbol
    for _ in range(10):
        pending = [pieces for word in words if len(pieces := _apply(_symbols(word), ranks)) > 1]
        if not pending:
            return merges
        for pieces in pending:
            built = pieces[0]
            for piece in pieces[1:]:
                add((built, piece))
                built += piece
    raise RuntimeError("some words still split after the repair merges")


def write_word_tokenizer(directory: Path, words: list[str]) -> int:
    """Write vocab.json and merges.txt for `words` (lower case) to `directory`; return the vocabulary size. The
    two special tokens come last, so the end-of-text token has the highest id (CLIP pools at it)."""
    directory.mkdir(parents=True, exist_ok=True)
    characters = list(_bytes_to_unicode().values())
    merges = word_merges(sorted({word.lower() for word in words}))
    tokens = characters + [c + "</w>" for c in characters]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    tokens += [BOS, EOS]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(tokens)
