"""Building a fresh diffusers scheduler for each request from the model's own scheduler config."""

from __future__ import annotations

from typing import Any

import diffusers

from sdapi.params import GenerationParams, check_karras
from sdapi.request import SCHEDULER_NAMES


def scheduler_name(params: GenerationParams, base_config: Any) -> str:
    """The scheduler class a request runs: its own choice, else the model's."""
    return params.scheduler or str(base_config["_class_name"])


def check_scheduler(params: GenerationParams, base_config: Any) -> None:
    """Raise InvalidParameter when the request asks for Karras sigmas from a scheduler without them. The API checks
    a named scheduler; this also covers the model's own one, which only the engine knows."""
    check_karras(scheduler_name(params, base_config), params.use_karras_sigmas)


def make_scheduler(params: GenerationParams, base_config: Any) -> Any:
    """A new scheduler for `params` built from the model's config, so no state leaks between requests."""
    name = scheduler_name(params, base_config)
    if name not in SCHEDULER_NAMES and name != base_config.get("_class_name"):
        raise ValueError(f"unknown scheduler {name!r}")
    check_scheduler(params, base_config)
    scheduler_class = getattr(diffusers, name)
    if params.use_karras_sigmas:
        return scheduler_class.from_config(base_config, use_karras_sigmas=True)
    return scheduler_class.from_config(base_config)
