"""The schedulers a request may name, in one place: the contract's nine and the ones added beside them, the options
each takes (`scheduler_options`), which can use Karras sigmas, and AUTOMATIC1111's name for each (its samplers and
infotexts). Pure: engines/schedulers.py builds the diffusers classes from these names."""

from __future__ import annotations

from dataclasses import dataclass

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
# A flow-matching model's own scheduler, and what the names a request may give run as on such a model: Euler is
# flow-match Euler; DPM-Solver++ 2M and UniPC run on flow sigmas with flow prediction (diffusers builds them so from
# the model's flow-match config: FLOW_OPTIONS); the other names have no flow-matching form and are refused.
FLOW_MATCH_EULER = "FlowMatchEulerDiscreteScheduler"
FLOW_SCHEDULERS: tuple[str, ...] = (
    FLOW_MATCH_EULER,
    "EulerDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "UniPCMultistepScheduler",
)
FLOW_ALIASES = {"EulerDiscreteScheduler": FLOW_MATCH_EULER}
FLOW_OPTIONS: dict[str, dict[str, object]] = {
    "DPMSolverMultistepScheduler": {"use_flow_sigmas": True, "prediction_type": "flow_prediction"},
    "UniPCMultistepScheduler": {"use_flow_sigmas": True, "prediction_type": "flow_prediction"},
}


def scheduler_that_runs(requested: str | None, own: str) -> str:
    """The scheduler class a run uses: the request's (None: the model's `own`), as a flow-matching model runs it
    (Euler as flow-match Euler)."""
    name = requested or own
    return FLOW_ALIASES.get(name, name) if own == FLOW_MATCH_EULER else name


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
    # (UniPC's disable_corrector is a list of step indices, which no option value can be: not offered.)
    "UniPCMultistepScheduler": _BASE | _SIGMAS | _SOLVER | {"final_sigmas_type", "rescale_betas_zero_snr"},
    "DEISMultistepScheduler": _BASE | _SIGMAS | _SOLVER | {"algorithm_type"},
    # No timestep_spacing or steps_offset on this class.
    "DPMSolverSinglestepScheduler": (_BASE - {"steps_offset", "timestep_spacing"})
    | _SIGMAS
    | _SOLVER
    | {"algorithm_type", "final_sigmas_type"},
    "LCMScheduler": _LCM,
    "TCDScheduler": _LCM,  # TCD takes exactly LCM's settings
    FLOW_MATCH_EULER: _SIGMAS | {"shift", "stochastic_sampling"},
}
# Settings of each denoising step (diffusers' step() arguments, not the scheduler's constructor's), by the scheduler
# classes that take them: DDIM's eta (0: deterministic, 1: DDPM's full noise; the pipeline passes it) and Euler's
# stochastic churn (k-diffusion's s_churn, s_tmin, s_tmax, s_noise). Each with its range.
STEP_OPTIONS: dict[str, dict[str, tuple[float, float]]] = {
    "DDIMScheduler": {"eta": (0.0, 1.0)},
    "EulerDiscreteScheduler": {
        "s_churn": (0.0, 100.0),
        "s_tmin": (0.0, 1000.0),
        "s_tmax": (0.0, float("inf")),
        "s_noise": (0.0, 2.0),
    },
}
# The schedulers that can space their sigmas the Karras way (AUTOMATIC1111's "Karras" schedule type).
KARRAS_SCHEDULERS: frozenset[str] = frozenset(
    name for name, options in SCHEDULER_OPTIONS.items() if "use_karras_sigmas" in options
)
SchedulerOptionValue = bool | int | float | str


@dataclass(frozen=True)
class OptionSpec:
    """What one scheduler option may be: its type, and its range or its allowed values (diffusers' own meaning)."""

    kind: type[bool] | type[int] | type[float] | type[str]
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def problem(self, value: SchedulerOptionValue, choices: tuple[str, ...] | None = None) -> str | None:
        """Why `value` is not allowed (a short Chinese phrase for the 400), or None when it is."""
        allowed = choices or self.choices
        if self.kind is bool:
            return None if isinstance(value, bool) else "须为 true 或 false"
        if self.kind is str:
            if not isinstance(value, str) or value not in allowed:
                return f"须为以下之一：{', '.join(allowed)}"
            return None
        # bool is an int in Python: refuse it where a number is meant.
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if not numeric or (self.kind is int and not isinstance(value, int)):
            return "须为整数" if self.kind is int else "须为数字"
        assert isinstance(value, int | float)
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            return f"须在 {self.minimum:g} 到 {self.maximum:g} 之间"
        return None


# Each option's type and bounds, checked before any scheduler is built: a value outside them is a 400 at submit, on
# every node alike (an API node builds no scheduler). The ranges are diffusers' meaning of the option: solver orders
# 1-3, a timestep offset inside the 1000 training steps, LCM's original schedule of at most 1000 steps.
OPTION_SPECS: dict[str, OptionSpec] = {
    "prediction_type": OptionSpec(str, choices=("epsilon", "v_prediction", "sample")),
    "steps_offset": OptionSpec(int, 0, 999),
    "timestep_spacing": OptionSpec(str, choices=("linspace", "leading", "trailing")),
    "use_karras_sigmas": OptionSpec(bool),
    "use_exponential_sigmas": OptionSpec(bool),
    "use_beta_sigmas": OptionSpec(bool),
    "solver_order": OptionSpec(int, 1, 3),
    "solver_type": OptionSpec(str, choices=("midpoint", "heun")),
    "lower_order_final": OptionSpec(bool),
    "thresholding": OptionSpec(bool),
    "algorithm_type": OptionSpec(str, choices=("dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++")),
    "euler_at_final": OptionSpec(bool),
    "final_sigmas_type": OptionSpec(str, choices=("zero", "sigma_min")),
    "rescale_betas_zero_snr": OptionSpec(bool),
    "use_lu_lambdas": OptionSpec(bool),
    "clip_sample": OptionSpec(bool),
    "set_alpha_to_one": OptionSpec(bool),
    "interpolation_type": OptionSpec(str, choices=("linear", "log_linear")),
    "timestep_type": OptionSpec(str, choices=("discrete", "continuous")),
    "skip_prk_steps": OptionSpec(bool),
    "original_inference_steps": OptionSpec(int, 1, 1000),
    "timestep_scaling": OptionSpec(float, 0.001, 1000),
    "shift": OptionSpec(float, 0.01, 100),
    "stochastic_sampling": OptionSpec(bool),
}
# Where a class allows other values of an option than OPTION_SPECS says (its own solvers and algorithms).
CLASS_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("UniPCMultistepScheduler", "solver_type"): ("bh1", "bh2"),
    ("DEISMultistepScheduler", "solver_type"): ("logrho",),
    ("DEISMultistepScheduler", "algorithm_type"): ("deis",),
    ("DPMSolverSinglestepScheduler", "algorithm_type"): ("dpmsolver", "dpmsolver++", "sde-dpmsolver++"),
}
# At most one way of spacing sigmas at a time (diffusers refuses two).
SIGMA_SPACINGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")

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
    FLOW_MATCH_EULER: "Euler",
}
