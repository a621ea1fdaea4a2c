"""The speed levers of one run (issue 48; sdapi.core.speed decides which a run gets), applied to the model's shared
modules while the run lasts and taken off after it, so the next run without them gets the plain pixels:

- step caches: DeepCache on a UNet (the DeepCache package's helper: on N-1 of every N UNet calls only the shallowest
  layers run, on the deep features the last full call left), diffusers' own caches on a transformer that has
  `enable_cache` (First Block Cache, TaylorSeer);
- token merging: tomesd merges similar latent pixels' tokens before a UNet's self-attention and unmerges them
  after, at the resolutions where attention costs most;
- the tiny decoder and VAE tiling (sdapi.vaes.tiny, sdapi.vaes.running).

Each is a context over modules every pipeline of the model shares (the text-to-image pipeline's UNet or
transformer and VAE: its image-to-image and inpainting pipelines are made from it with from_pipe)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from DeepCache import DeepCacheSDHelper

from sdapi.core.params import GenerationParams
from sdapi.core.request import StepCache
from sdapi.vaes.running import tiled_vae
from sdapi.vaes.tiny import tiny_decoding


@contextlib.contextmanager
def speedups_applied(pipeline: Any, params: GenerationParams, tiny: Any | None) -> Iterator[None]:
    """`params`' levers on `pipeline`'s modules for the run: its step cache, token merging, and the VAE's decoding
    (tiny, when `tiny` is the run's tiny decoder; tiled, when the run asks for it or is large)."""
    with contextlib.ExitStack() as applied:
        if params.step_cache is not None:
            applied.enter_context(step_cache_applied(pipeline, params.step_cache))
        if params.token_merging > 0:
            applied.enter_context(token_merging_applied(pipeline.unet, params.token_merging))
        if tiny is not None and params.vae_decoder == "tiny":
            applied.enter_context(tiny_decoding(pipeline.vae, tiny, params.vae_tiling))
        else:
            applied.enter_context(tiled_vae(pipeline, params.vae_tiling))
        yield


def step_cache_applied(pipeline: Any, cache: StepCache) -> contextlib.AbstractContextManager[None]:
    """The run's step cache on the pipeline's denoiser."""
    if cache.mode == "deepcache":
        return _deepcache(pipeline.unet, cache.interval or 3, cache.branch or 0)
    return _diffusers_cache(pipeline.transformer, cache)


@contextlib.contextmanager
def _deepcache(unet: Any, interval: int, branch: int) -> Iterator[None]:
    # Forwards another context put on the UNet's modules (seamless tiling's convolutions) are theirs to take off.
    others = {id(module) for module in unet.modules() if "forward" in module.__dict__}
    helper = CallCountingDeepCache(unet)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    try:
        yield
    finally:
        helper.disable()
        # DeepCache's unwrap puts each module's bound `forward` back as an instance attribute: dropped, the modules
        # are exactly as they were (their class's forward).
        for module in unet.modules():
            if id(module) not in others:
                module.__dict__.pop("forward", None)


class CallCountingDeepCache(DeepCacheSDHelper):  # type: ignore[misc]
    """DeepCache's helper, counting UNet calls instead of looking each call's timestep up in the pipeline's
    scheduler: the run's scheduler is not always the pipeline's (a second pass runs on the image-to-image
    pipeline), and samplers that repeat timesteps (Heun, DPM2) would make the lookup count wrong. A call whose
    timestep is above the last one's, or whose latents have another shape, starts a new denoising loop (the next
    image of the run, the second pass): it runs in full and the count starts again, so each picture is the one a
    lone run of it makes."""

    def __init__(self, unet: Any) -> None:
        super().__init__(pipe=_UnetHolder(unet))
        self._last: tuple[float, tuple[int, ...]] | None = None
        self._calls = 0

    def wrap_unet_forward(self) -> None:
        unet = self.pipe.unet
        self.function_dict["unet_forward"] = unet.forward

        def counted_forward(sample: Any, timestep: Any, *args: Any, **kwargs: Any) -> Any:
            now = float(torch.as_tensor(timestep).flatten()[0])
            shape = tuple(sample.shape)
            if self._last is None or now > self._last[0] or shape != self._last[1]:
                self._calls = 0  # a new denoising loop: a full call, and the count from it
                self.start_timestep = None
            self._last = (now, shape)
            self.cur_timestep = self._calls
            self._calls += 1
            return self.function_dict["unet_forward"](sample, timestep, *args, **kwargs)

        unet.forward = counted_forward


class _UnetHolder:
    """What DeepCache's helper reads of a pipeline: its UNet."""

    def __init__(self, unet: Any) -> None:
        self.unet = unet


@contextlib.contextmanager
def _diffusers_cache(transformer: Any, cache: StepCache) -> Iterator[None]:
    from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig

    config: Any
    if cache.mode == "first_block":
        config = FirstBlockCacheConfig(threshold=cache.threshold or 0.05)
    else:
        config = TaylorSeerCacheConfig(cache_interval=cache.interval or 5)
    transformer.enable_cache(config)
    _forget_child_registries(transformer)
    try:
        yield
    finally:
        transformer.disable_cache()
        _forget_child_registries(transformer)


def _forget_child_registries(transformer: Any) -> None:
    """diffusers 0.38 remembers which blocks have hooks the first time a pipeline sets a cache context and never
    forgets: blocks hooked by enable_cache afterwards would get no context (ValueError: No context is set), and
    blocks unhooked by disable_cache would keep getting one. diffusers#14037, fixed after 0.38 by #14093, which
    clears the same list on enable_cache and disable_cache."""
    for module in transformer.modules():
        registry = module.__dict__.get("_diffusers_hook")
        if registry is not None:
            registry._child_registries_cache = None


@contextlib.contextmanager
def token_merging_applied(unet: Any, ratio: float) -> Iterator[None]:
    """tomesd on `unet` at `ratio`, merging at the highest resolution that has attention (SD 1.x/2.x: the latent's
    own; SDXL: half of it, its first level has none). Each 2x2 cell's destination token is its first, not a random
    one (tomesd's use_rand off): its random choices come from one generator across every call, so image k of a run
    (whose second passes follow the others') would not be a lone run of seed + k, and the seed rule would break."""
    import tomesd

    tomesd.apply_patch(unet, ratio=ratio, max_downsample=_first_attention_downsample(unet), use_rand=False)
    try:
        yield
    finally:
        tomesd.remove_patch(unet)
        for module in unet.modules():
            module.__dict__.pop("_tome_info", None)


def _first_attention_downsample(unet: Any) -> int:
    """How much the first level of `unet` with attention is downsampled (1: the latent's own resolution)."""
    for level, block in enumerate(unet.down_blocks):
        if getattr(block, "attentions", None):
            return int(2**level)
    return 1
