"""The arithmetic of live previews, on tensors: the least-squares latent-to-RGB fit, and x0 from a scheduler's step
(its own pred_original_sample where it gives one, and sdapi's formulas where it does not, checked against one that
does)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    PNDMScheduler,
)

from sdapi.previews.denoised import StepWatch
from sdapi.previews.latent_rgb import fit_map, fitting_pictures
from sdapi.previews.pictures import preview_size


def test_the_fit_recovers_a_linear_encoding_exactly():
    pictures = fitting_pictures(count=6, side=64)
    matrix = torch.randn(3, 4)
    bias = torch.randn(4)
    # A "VAE" that is linear per 8x8 cell: the cell's mean colour times a matrix, plus a bias.
    cells = F.interpolate(pictures, size=(8, 8), mode="area")
    latents = torch.einsum("nchw,cd->ndhw", cells, matrix) + bias.view(1, 4, 1, 1)
    fitted = fit_map(latents, pictures)
    assert fitted.rms_error < 1e-4
    assert torch.allclose(fitted.project(latents[0]), cells[0].clamp(-1, 1), atol=1e-3)


def test_the_fitting_pictures_are_fixed_and_cover_the_colour_range():
    first, again = fitting_pictures(), fitting_pictures()
    assert torch.equal(first, again) and first.shape == (8, 3, 128, 128)
    assert first.min() < -0.9 and first.max() > 0.9


def test_preview_sizes_keep_the_aspect_under_the_longest_side():
    assert preview_size((512, 512), 256) == (256, 256)
    assert preview_size((1024, 576), 256) == (256, 144)
    assert preview_size((128, 96), 256) == (128, 96)  # never enlarged


def _one_step(scheduler, prediction: torch.Tensor, sample: torch.Tensor) -> StepWatch:
    watch = StepWatch(scheduler)
    scheduler.set_timesteps(10)
    timestep = scheduler.timesteps[3]
    for index in range(3):  # a few steps in, where the formulas matter
        scheduler.step(prediction, scheduler.timesteps[index], sample, return_dict=False)
    scheduler.step(prediction, timestep, sample, return_dict=False)
    return watch


def test_x0_is_the_schedulers_own_where_it_gives_one_and_the_formula_agrees_elsewhere():
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    noise = torch.randn(1, 4, 8, 8, generator=generator)
    ddim = DDIMScheduler()
    given = _one_step(ddim, noise, sample)
    assert given.denoised() is not None
    # PNDM and DPM++ give no x0: sdapi works it out from alphas_cumprod, which must match DDIM's own at the timestep.
    for scheduler in (PNDMScheduler(skip_prk_steps=True), DPMSolverMultistepScheduler()):
        watch = StepWatch(scheduler)
        scheduler.set_timesteps(10)
        scheduler.step(noise, scheduler.timesteps[0], sample)
        timestep = int(scheduler.timesteps[0])
        alpha = scheduler.alphas_cumprod[timestep]
        expected = (sample - (1 - alpha).sqrt() * noise) / alpha.sqrt()
        assert torch.allclose(watch.denoised(), expected, atol=1e-5), type(scheduler).__name__
    euler = _one_step(EulerDiscreteScheduler(), noise, sample)
    assert euler.denoised() is not None


def test_flow_matching_x0_is_the_sample_minus_sigma_times_the_velocity():
    scheduler = FlowMatchEulerDiscreteScheduler()
    watch = StepWatch(scheduler)
    scheduler.set_timesteps(8)
    sample, velocity = torch.randn(1, 16, 4, 4), torch.randn(1, 16, 4, 4)
    sigma = scheduler.sigmas[0]
    after = scheduler.step(velocity, scheduler.timesteps[0], sample, return_dict=False)[0]
    assert torch.allclose(watch.denoised(), sample - sigma * velocity, atol=1e-6)
    # Stepping to sigma 0 along that velocity lands on it: x0 is where the straight path ends.
    assert torch.allclose(sample + (0 - sigma) * velocity, watch.denoised(), atol=1e-6)
    assert not torch.equal(after, watch.denoised())


def test_nothing_is_predicted_before_the_first_step():
    assert StepWatch(DDIMScheduler()).denoised() is None
