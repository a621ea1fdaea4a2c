"""The predicted final image between two steps (x0, "denoised"): what a live preview shows, as InvokeAI and
AUTOMATIC1111's "Full"/"Approx" previews do, rather than the noisy latents, which stay grey noise for most of a run.

The pipeline's step callback sees only the latents after the step, so the run's scheduler is watched instead: its
`step()` is wrapped to keep references to its inputs (the noise prediction, the sample, the timestep) and output.
Nothing is computed there; x0 is worked out only when a preview is due, from what the scheduler gave:

- its own `pred_original_sample` (DDIM, Euler, Euler a, Heun, LMS, KDPM2, DDPM return it);
- flow matching (FlowMatch*, and the solvers on flow sigmas): x0 = x_t − σ_t · v;
- the DDPM-space solvers (PNDM, DPM++, UniPC, DEIS): from ᾱ_t and the prediction type;
- otherwise the latents after the step (a noisier picture, still a picture).
"""

from __future__ import annotations

import functools
from typing import Any

import torch


class StepWatch:
    """Wraps one scheduler instance's step() (each run builds a fresh scheduler) and keeps its last call."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self._model_output: torch.Tensor | None = None
        self._sample: torch.Tensor | None = None
        self._timestep: Any = None
        self._result: Any = None
        original = scheduler.step

        # wraps: pipelines read step()'s signature to decide whether to pass `generator` and `eta`
        # (prepare_extra_step_kwargs); inspect.signature follows __wrapped__ to the scheduler's own.
        @functools.wraps(original)
        def step(model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            result = original(model_output, timestep, sample, *args, **kwargs)
            self._model_output, self._timestep, self._sample, self._result = model_output, timestep, sample, result
            return result

        scheduler.step = step

    def denoised(self) -> torch.Tensor | None:
        """x0 as predicted at the last step, or None before the first step or for a scheduler that tells nothing."""
        if self._result is None or self._sample is None or self._model_output is None:
            return None
        given = _pred_original_sample(self._result)
        if given is not None:
            return given
        scheduler, sample, output = self.scheduler, self._sample, self._model_output
        prediction = getattr(scheduler.config, "prediction_type", "epsilon")
        if "FlowMatch" in type(scheduler).__name__ or prediction == "flow_prediction":
            index = getattr(scheduler, "step_index", None)
            if index is None or index < 1:
                return None
            sigma = scheduler.sigmas[index - 1].to(sample.device, torch.float32)
            return sample.to(torch.float32) - sigma * output.to(torch.float32)
        alphas = getattr(scheduler, "alphas_cumprod", None)
        if alphas is None:
            return None
        timestep = int(self._timestep.item() if isinstance(self._timestep, torch.Tensor) else self._timestep)
        timestep = min(max(timestep, 0), len(alphas) - 1)
        alpha = alphas[timestep].to(sample.device, torch.float32)
        sample32, output32 = sample.to(torch.float32), output.to(torch.float32)
        if prediction == "v_prediction":
            return alpha.sqrt() * sample32 - (1 - alpha).sqrt() * output32
        if prediction == "sample":
            return output32
        return (sample32 - (1 - alpha).sqrt() * output32) / alpha.sqrt()


def _pred_original_sample(result: Any) -> torch.Tensor | None:
    found = getattr(result, "pred_original_sample", None)
    if found is None and isinstance(result, tuple) and len(result) > 1 and isinstance(result[1], torch.Tensor):
        first = result[0]
        if isinstance(first, torch.Tensor) and result[1].shape == first.shape:
            found = result[1]
    return found


def watch_scheduler(pipeline: Any) -> StepWatch:
    """The watch on `pipeline`'s scheduler (wrapped once: a second call on the same scheduler finds the first)."""
    scheduler = pipeline.scheduler
    existing = getattr(scheduler, "_sdapi_step_watch", None)
    if isinstance(existing, StepWatch):
        return existing
    watch = StepWatch(scheduler)
    scheduler._sdapi_step_watch = watch
    return watch
