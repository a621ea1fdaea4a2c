"""Progress of a long command (the ONNX export, building the tiny model, benchmarks) on stderr: on a terminal, one
line redrawn in place with a bar, the stage, what it is doing now and the time it has taken; elsewhere (CI, logs,
pipes) a plain line per stage and per detail, which stays readable in a log file."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

_SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_BAR = 20
_REDRAW_SECONDS = 0.2


class Stages:
    """Used as `with Stages(total) as stages:`; `stage(text)` starts the next of `total` stages, `detail(text)` says
    what the current one is doing. Leaving the block closes the display (marking the last stage failed when an
    exception leaves it). `stream=None` shows nothing."""

    def __init__(self, total: int, stream: TextIO | None = sys.stderr) -> None:
        self._total = total
        self._stream = stream
        self._terminal = bool(stream is not None and stream.isatty())
        self._index = 0
        self._text = ""
        self._detail = ""
        self._began = self._stage_began = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if self._terminal:  # keeps the clock moving during a long step that reports nothing
            self._ticker = threading.Thread(target=self._tick, name="sdapi-stages", daemon=True)
            self._ticker.start()

    def __enter__(self) -> Stages:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=1)
        with self._lock:
            if self._terminal and self._index:
                self._write_line("✓" if kind is None else "✗")
            if kind is None:
                self._plain(f"done in {time.monotonic() - self._began:.1f}s")

    def stage(self, text: str) -> None:
        with self._lock:
            if self._terminal and self._index:
                self._write_line("✓")
            self._index += 1
            self._text, self._detail = text, ""
            self._stage_began = time.monotonic()
            if self._terminal:
                self._redraw()
            else:
                self._plain(f"[{self._index}/{self._total}] {text}")

    def detail(self, text: str) -> None:
        with self._lock:
            self._detail = text
            if self._terminal:
                self._redraw()
            else:
                self._plain(f"    {text}")

    def _tick(self) -> None:
        while not self._stop.wait(_REDRAW_SECONDS):
            with self._lock:
                if self._index:
                    self._redraw()

    def _redraw(self) -> None:
        assert self._stream is not None
        filled = _BAR * (self._index - 1) // max(self._total, 1)
        spinner = _SPINNER[int(time.monotonic() / _REDRAW_SECONDS) % len(_SPINNER)]
        elapsed = time.monotonic() - self._stage_began
        detail = f" · {self._detail}" if self._detail else ""
        line = f"{spinner} [{'█' * filled}{'░' * (_BAR - filled)}] {self._index}/{self._total} {self._text}{detail}"
        self._stream.write(f"\r\x1b[2K{line} {elapsed:.1f}s")
        self._stream.flush()

    def _write_line(self, mark: str) -> None:
        assert self._stream is not None
        elapsed = time.monotonic() - self._stage_began
        self._stream.write(f"\r\x1b[2K{mark} [{self._index}/{self._total}] {self._text} ({elapsed:.1f}s)\n")
        self._stream.flush()

    def _plain(self, line: str) -> None:
        if self._stream is not None:
            print(line, file=self._stream, flush=True)
