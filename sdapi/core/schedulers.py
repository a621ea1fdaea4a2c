"""The schedulers a request may name, in one place: the contract's nine and the ones added beside them, the options
each takes (`scheduler_options`), which can use Karras sigmas, and AUTOMATIC1111's name for each (its samplers and
infotexts). Pure: engines/schedulers.py builds the diffusers classes from these names."""

from __future__ import annotations

# The contract's nine sampler names (the seed's table): diffusers scheduler classes.
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
# Accepted besides the contract's nine: UniPC, DEIS, DPM-Solver singlestep, and LCM and TCD for few-step models
# (LCM/Turbo/Lightning checkpoints and LoRAs).
EXTRA_SCHEDULER_NAMES: tuple[str, ...] = (
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "LCMScheduler",
    "TCDScheduler",
)
ACCEPTED_SCHEDULERS: tuple[str, ...] = SCHEDULER_NAMES + EXTRA_SCHEDULER_NAMES
# What `scheduler_options` may set on each class: the settings model pages tell users to copy (sigma spacing,
# solver order and type, timestep spacing, prediction type...), each one the class's own constructor takes (a unit
# test holds this table to diffusers' signatures). Training-time settings (betas, train timesteps) are not offered.
_BASE = frozenset({"prediction_type", "steps_offset", "timestep_spacing"})
_SIGMAS = frozenset({"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"})
_SOLVER = frozenset({"solver_order", "solver_type", "lower_order_final", "thresholding"})
_LCM = _BASE | {"clip_sample", "original_inference_steps", "rescale_betas_zero_snr", "set_alpha_to_one"}
_LCM |= {"thresholding", "timestep_scaling"}
SCHEDULER_OPTIONS: dict[str, frozenset[str]] = {
    "DPMSolverMultistepScheduler": _BASE
    | _SIGMAS
    | _SOLVER
    | {"algorithm_type", "euler_at_final", "final_sigmas_type", "rescale_betas_zero_snr", "use_lu_lambdas"},
    "DDIMScheduler": _BASE | {"clip_sample", "rescale_betas_zero_snr", "set_alpha_to_one", "thresholding"},
    "EulerDiscreteScheduler": _BASE
    | _SIGMAS
    | {"final_sigmas_type", "interpolation_type", "rescale_betas_zero_snr", "timestep_type"},
    "EulerAncestralDiscreteScheduler": _BASE | {"rescale_betas_zero_snr"},
    "PNDMScheduler": _BASE | {"set_alpha_to_one", "skip_prk_steps"},
    "LMSDiscreteScheduler": _BASE | _SIGMAS,
    "HeunDiscreteScheduler": _BASE | _SIGMAS | {"clip_sample"},
    "KDPM2DiscreteScheduler": _BASE | _SIGMAS,
    "KDPM2AncestralDiscreteScheduler": _BASE | _SIGMAS,
    "UniPCMultistepScheduler": _BASE
    | _SIGMAS
    | _SOLVER
    | {"disable_corrector", "final_sigmas_type", "rescale_betas_zero_snr"},
    "DEISMultistepScheduler": _BASE | _SIGMAS | _SOLVER | {"algorithm_type"},
    # No timestep_spacing or steps_offset on this class.
    "DPMSolverSinglestepScheduler": (_BASE - {"steps_offset", "timestep_spacing"})
    | _SIGMAS
    | _SOLVER
    | {"algorithm_type", "final_sigmas_type"},
    "LCMScheduler": _LCM,
    "TCDScheduler": _LCM,  # TCD takes exactly LCM's settings
}
# The schedulers that can space their sigmas the Karras way (AUTOMATIC1111's "Karras" schedule type).
KARRAS_SCHEDULERS: frozenset[str] = frozenset(
    name for name, options in SCHEDULER_OPTIONS.items() if "use_karras_sigmas" in options
)
SchedulerOptionValue = bool | int | float | str

# AUTOMATIC1111's sampler names for every accepted scheduler (what its infotext's "Sampler:" says).
A1111_SAMPLER_NAMES = {
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "DDIMScheduler": "DDIM",
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "PNDMScheduler": "PLMS",
    "LMSDiscreteScheduler": "LMS",
    "HeunDiscreteScheduler": "Heun",
    "KDPM2DiscreteScheduler": "DPM2",
    "KDPM2AncestralDiscreteScheduler": "DPM2 a",
    "UniPCMultistepScheduler": "UniPC",
    "DEISMultistepScheduler": "DEIS",
    "DPMSolverSinglestepScheduler": "DPM++ SDE",
    "LCMScheduler": "LCM",
    "TCDScheduler": "TCD",
}
