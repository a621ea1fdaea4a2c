"""Building a fresh diffusers scheduler for each request from the model's own scheduler config."""

from __future__ import annotations

import functools
from typing import Any

import diffusers

from sdapi.core.params import GenerationParams, check_karras, check_scheduler_options, check_step_options
from sdapi.core.schedulers import ACCEPTED_SCHEDULERS, FLOW_MATCH_EULER, FLOW_OPTIONS, scheduler_that_runs
from sdapi.errors import InvalidParameter


def scheduler_name(params: GenerationParams, base_config: Any) -> str:
    """The scheduler class a request runs: its own choice, else the model's (on a flow-matching model, as it runs
    there: sdapi.core.schedulers.scheduler_that_runs)."""
    return scheduler_that_runs(params.scheduler, str(base_config["_class_name"]))


def check_scheduler(params: GenerationParams, base_config: Any) -> None:
    """Raise InvalidParameter when the request's Karras sigmas or scheduler_options do not suit the scheduler, or
    its option values make no schedule. The API checks what it can of a named scheduler; this also covers the
    model's own one, which only the engine knows."""
    make_scheduler(params, base_config)


def make_scheduler(params: GenerationParams, base_config: Any) -> Any:
    """A new scheduler for `params` built from the model's config, so no state leaks between requests (a
    v-prediction model's config keeps its scheduler v-prediction); raise InvalidParameter for options it refuses."""
    name = scheduler_name(params, base_config)
    if name not in ACCEPTED_SCHEDULERS and name != base_config.get("_class_name"):
        raise ValueError(f"unknown scheduler {name!r}")
    check_karras(name, params.use_karras_sigmas)
    check_scheduler_options(name, params.scheduler_options, params.num_inference_steps)
    check_step_options(name, params.step_options)
    options: dict[str, Any] = dict(params.scheduler_options)
    if base_config.get("_class_name") == FLOW_MATCH_EULER and name in FLOW_OPTIONS:
        # A multistep solver on the model's flow sigmas, shifted as its own scheduler shifts them.
        options = {**FLOW_OPTIONS[name], "flow_shift": base_config.get("shift", 1.0), **options}
    if params.use_karras_sigmas:
        options["use_karras_sigmas"] = True
    try:
        scheduler = getattr(diffusers, name).from_config(base_config, **options)
        # What a bad value breaks, it breaks here. A resolution-dependent shift (FLUX) needs a shift to try with; the
        # pipeline sets the picture's own when it runs.
        trial = {"mu": 1.0} if scheduler.config.get("use_dynamic_shifting") else {}
        scheduler.set_timesteps(params.num_inference_steps, **trial)
    except (ValueError, TypeError, NotImplementedError, KeyError) as error:
        given = ", ".join(f"{key}={value!r}" for key, value in params.scheduler_options.items())
        raise InvalidParameter("scheduler_options", f"{name} 的 scheduler_options 无效（{given}）：{error}") from None
    churn = {key: value for key, value in params.step_options.items() if key != "eta"}  # eta: the pipeline's own
    if churn:
        # functools.partial keeps step()'s signature readable: pipelines still pass the request's generators.
        scheduler.step = functools.partial(scheduler.step, **churn)
    return scheduler
