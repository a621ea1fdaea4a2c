"""Reading a model folder's JSON configs (a component's config.json, a scheduler's config) where a missing or broken
file means "not known from disk": the caller decides from what it has and leaves the rest to the worker's load."""

from __future__ import annotations

import json
from pathlib import Path


def read_config(path: Path) -> dict[str, object] | None:
    """The JSON object in `path`, or None when the file is missing, unreadable or not an object."""
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None
