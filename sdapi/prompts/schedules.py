"""AUTOMATIC1111's prompt editing and alternation: a prompt whose text changes as the steps go (its
prompt_parser's schedules, read from its wiki and source).

- `[from:to:when]` reads `from` up to step `when`, then `to`; `[to:when]` adds `to` from then on; `[from::when]`
  drops `from` then. `when` with a decimal point is a fraction of the steps (0.5 of 20: step 10), without one a
  step number. Nested brackets work.
- `[a|b|c]` alternates every step: a, b, c, a, ...
- Other brackets (emphasis) are left in the text for the attention parser (sdapi.prompts.a1111_syntax).

`prompt_schedule(text, steps)` gives [(end_at_step, text)]: the text to condition every sampling step (counted
from 0) up to and including end_at_step, as A1111's reconstruct_cond_batch picks it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sdapi.prompts import PromptSyntaxError

# Square brackets nested deeper than this are refused (each level is a call of the parser below).
MAX_NESTING = 64
_NUMBER = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*$")


@dataclass
class _Scheduled:
    before: list[object]
    after: list[object]
    when: str  # as written: "0.5" (a fraction) or "10" (a step)


@dataclass
class _Alternate:
    options: list[list[object]]


class _Parser:
    """A recursive-descent reading of the grammar above; anything it cannot read as a schedule stays text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0
        self.depth = 0
        # Each bracket read once, by its position: a bracket that turns out to be text is read again as part of its
        # parent's text, and without this every level of nesting would double the work.
        self._read: dict[int, tuple[object, int]] = {}

    def parse(self) -> list[object]:
        nodes = self._sequence(stop="")
        while self.position < len(self.text):  # a stray closing bracket or separator: text
            nodes.append(self.text[self.position])
            self.position += 1
            nodes.extend(self._sequence(stop=""))
        return nodes

    def _sequence(self, stop: str) -> list[object]:
        nodes: list[object] = []
        while self.position < len(self.text):
            character = self.text[self.position]
            if character == "\\" and self.position + 1 < len(self.text):
                nodes.append(self.text[self.position : self.position + 2])
                self.position += 2
            elif character in stop:
                return nodes
            elif character == "[":
                nodes.append(self._bracket())
            else:
                nodes.append(character)
                self.position += 1
        return nodes

    def _bracket(self) -> object:
        """A `[...]`: a schedule or an alternation where it reads as one, else its characters as text."""
        start = self.position
        if start in self._read:
            node, self.position = self._read[start]
            return node
        self.position += 1
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise PromptSyntaxError(f"方括号嵌套超过 {MAX_NESTING} 层")
        try:
            node = self._bracket_body(start)
        finally:
            self.depth -= 1
        self._read[start] = (node, self.position)
        return node

    def _bracket_body(self, start: int) -> object:
        parts = [self._sequence(stop=":|]")]
        separators: list[str] = []
        while self.position < len(self.text) and self.text[self.position] in ":|":
            separators.append(self.text[self.position])
            self.position += 1
            parts.append(self._sequence(stop=":|]"))
        if self.position >= len(self.text):  # never closed: text
            self.position = start + 1
            return "["
        self.position += 1  # the "]"
        if separators and all(separator == "|" for separator in separators):
            return _Alternate(parts)
        if separators and all(separator == ":" for separator in separators) and len(parts) in (2, 3):
            when = "".join(str(node) for node in parts[-1]) if all(isinstance(n, str) for n in parts[-1]) else ""
            if _NUMBER.match(when):
                before = parts[0] if len(parts) == 3 else []
                after = parts[1] if len(parts) == 3 else parts[0]
                return _Scheduled(before, after, when.strip())
        # Emphasis or text with colons: keep the brackets and what they hold for the attention parser.
        self.position = start + 1
        return "["


def _when_step(when: str, steps: int) -> int:
    value = float(when)
    step = value * steps if "." in when else value
    return min(steps, int(step))


def _collect(nodes: list[object], steps: int, found: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Scheduled):
            step = _when_step(node.when, steps)
            if step >= 1:
                found.add(step)
            _collect(node.before, steps, found)
            _collect(node.after, steps, found)
        elif isinstance(node, _Alternate):
            found.update(range(1, steps + 1))
            for option in node.options:
                _collect(option, steps, found)


def _text(nodes: list[object], step: int, steps: int) -> str:
    parts: list[str] = []
    for node in nodes:
        if isinstance(node, _Scheduled):
            chosen = node.before if step <= _when_step(node.when, steps) else node.after
            parts.append(_text(chosen, step, steps))
        elif isinstance(node, _Alternate):
            parts.append(_text(node.options[(step - 1) % len(node.options)], step, steps))
        else:
            parts.append(str(node))
    return "".join(parts)


def prompt_schedule(text: str, steps: int) -> list[tuple[int, str]]:
    """[(end_at_step, text)] for a run of `steps` steps; one entry for a prompt without editing or alternation."""
    nodes = _Parser(text).parse()
    found = {steps}
    _collect(nodes, steps, found)
    return [(step, _text(nodes, step, steps)) for step in sorted(found)]


def check_prompt(text: str, steps: int) -> None:
    """Raise PromptSyntaxError for a prompt A1111's syntax cannot read: brackets nested too deep, a weight that is
    no finite number (in any of its scheduled texts)."""
    from sdapi.prompts.a1111_syntax import parse

    for _, scheduled in prompt_schedule(text, steps):
        parse(scheduled)


def text_at(schedule: list[tuple[int, str]], current_step: int) -> int:
    """The index of the schedule's entry that conditions sampling step `current_step` (counted from 0)."""
    for index, (end_at_step, _) in enumerate(schedule):
        if current_step <= end_at_step:
            return index
    return len(schedule) - 1
