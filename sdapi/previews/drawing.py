"""How the step callback reaches the picture: while the engine reports a step (on the generation thread), the
picture of that step can be drawn on request. The engine's step reporter sets what would draw it around its call to
the run's step callback; the callback (the worker's, which knows the task's cadence) draws only when a preview is
due. Nothing is drawn, and nothing costs, at the other steps; the recipes' step callbacks (a second pass's offset
steps, a batch's members) pass through unchanged."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from PIL import Image

# Draws the current step's picture with (longest side, tiny decoder folder or None).
Drawer = Callable[[int, "str | None"], Image.Image]

_current = threading.local()


@contextlib.contextmanager
def drawable(drawer: Drawer) -> Iterator[None]:
    """While the block runs (one step's report), draw_current() draws with `drawer`."""
    previous = getattr(_current, "drawer", None)
    _current.drawer = drawer
    try:
        yield
    finally:
        _current.drawer = previous


def draw_current(max_side: int, decoder: str | None = None) -> Image.Image | None:
    """The picture of the step being reported on this thread, or None outside a step report (an engine that
    cannot draw)."""
    drawer: Drawer | None = getattr(_current, "drawer", None)
    return None if drawer is None else drawer(max_side, decoder)
