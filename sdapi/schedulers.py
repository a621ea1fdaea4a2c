"""The nine sampler names the API accepts (the seed's table). Pure: no diffusers import here."""

from __future__ import annotations

SCHEDULER_NAMES: tuple[str, ...] = (
    "DPMSolverMultistepScheduler",
    "DDIMScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
)
