"""Prompt styles as AUTOMATIC1111 keeps them: a CSV file (`styles.file`) of `name,prompt,negative_prompt`, each a
piece of prompt applied by name. A style's text containing `{prompt}` has the request's prompt put in its place;
otherwise it is appended after a comma (A1111's rule, for the prompt and the negative prompt alike). Styles apply
in the order named, when the request is admitted: the task records the prompts as they ran.

The file is read again when it changes (its modification time), so styles can be edited while the service runs."""

from __future__ import annotations

import csv
import io
import threading
from dataclasses import dataclass
from pathlib import Path

from sdapi.errors import InvalidParameter

PROMPT_PLACEHOLDER = "{prompt}"


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str
    negative_prompt: str


def parse_styles(text: str) -> dict[str, Style]:
    """The styles of an A1111 styles.csv, by name (later rows win; rows without a name are skipped)."""
    styles: dict[str, Style] = {}
    for row in csv.DictReader(io.StringIO(text)):
        name = (row.get("name") or "").strip()
        if name:
            styles[name] = Style(name, row.get("prompt") or "", row.get("negative_prompt") or "")
    return styles


def merge_prompt(style_text: str, prompt: str) -> str:
    """`prompt` with one style's text applied, as A1111 applies it."""
    if PROMPT_PLACEHOLDER in style_text:
        return style_text.replace(PROMPT_PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


class StyleBook:
    """The styles of one file, read again when it changes; no file, no styles."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: float | None = None
        self._styles: dict[str, Style] = {}

    def listed(self) -> list[Style]:
        return list(self._current().values())

    def apply(self, names: list[str], prompt: str, negative_prompt: str | None) -> tuple[str, str | None]:
        """The prompts with the named styles applied in order; raise InvalidParameter naming `styles` (and the
        known ones) for a name the file does not have."""
        styles = self._current()
        unknown = [name for name in names if name not in styles]
        if unknown:
            known = "、".join(styles) or f"无（{self.path} 中没有样式）"
            raise InvalidParameter("styles", f"样式不存在：{'、'.join(unknown)}。可用样式：{known}")
        negative = negative_prompt or ""
        for name in names:
            prompt = merge_prompt(styles[name].prompt, prompt)
            negative = merge_prompt(styles[name].negative_prompt, negative)
        return prompt, negative or None

    def _current(self) -> dict[str, Style]:
        with self._lock:
            try:
                stamp = self.path.stat().st_mtime
            except OSError:  # no file: no styles
                self._stamp, self._styles = None, {}
                return self._styles
            if stamp != self._stamp:
                self._styles = parse_styles(self.path.read_text(encoding="utf-8-sig"))
                self._stamp = stamp
            return self._styles
