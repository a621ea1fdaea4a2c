"""Building a fresh diffusers scheduler for each request from the model's own scheduler config."""

from __future__ import annotations

from typing import Any

import diffusers

from sdapi.request import SCHEDULER_NAMES


def make_scheduler(name: str, base_config: Any) -> Any:
    """A new scheduler of class `name` built from the model's config, so no state leaks between requests."""
    if name not in SCHEDULER_NAMES and name != base_config.get("_class_name"):
        raise ValueError(f"unknown scheduler {name!r}")
    scheduler_class = getattr(diffusers, name)
    return scheduler_class.from_config(base_config)
