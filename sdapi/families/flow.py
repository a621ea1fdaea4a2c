"""What the diffusion-transformer families (SD 3.x, FLUX.1, FLUX.2 [klein], Z-Image) share, in one builder each of
their modules calls: flow matching, whose schedulers differ from the UNet families'; a transformer that LoRAs change
alone (named by diffusers' module paths under kohya's style of prefix); sides in multiples of 16; no IP-Adapter,
embeddings or latent second pass; one ControlNet unit for text-to-image where diffusers has the pipeline."""

from __future__ import annotations

from typing import Any

from sdapi.core.schedulers import FLOW_OPTIONS, FLOW_SCHEDULERS
from sdapi.families.base import ControlNetSupport, Family

# The schedulers a flow-matching model runs: flow-match Euler (its own), and the multistep solvers diffusers runs
# on flow sigmas (sdapi.core.schedulers says how each is built on a flow model).
FLOW_MATCH_SCHEDULERS: tuple[str, ...] = FLOW_SCHEDULERS
# The solvers that run on flow sigmas serve text-to-image alone (Family.text_to_image_only_schedulers).
FLOW_SOLVERS: tuple[str, ...] = tuple(FLOW_OPTIONS)

_SHARED: dict[str, Any] = {
    "native_side": 1024,
    "load_options": {},
    # LoRAs change the transformer; the text encoders (CLIP, T5, Qwen3) stay as they are.
    "kohya_prefixes": {"transformer": "lora_transformer_"},
    "adapter_text_encoders": (),
    "denoiser": "transformer",
    "schedulers": FLOW_MATCH_SCHEDULERS,
    "text_to_image_only_schedulers": FLOW_SOLVERS,
    "batches_prompt_lists": True,
    "side_multiple": 16,  # the VAE's 8 times a 2x2 patch
    "latent_hires": False,  # their latents are packed: a second pass upscales pixels
    "image_prompts": False,
    "controlnet": None,
    "onnx_pipelines": ("", "", ""),
    "onnx_parts": (),
    "clip_skip": False,  # SD 3.x's CLIP encoders take it (its module says so); T5 and Qwen do not
    "latent_channels": 16,  # FLUX.2's own module says 32
    "weighted_prompts": False,  # T5, Qwen: their prompts are read as written
    "tiling": False,  # a transformer denoises: no convolutions to wrap around
    "step_caches": (),  # diffusers' caches (enable_cache) where its transformer class has them: FLUX.1's, FLUX.2's
    "token_merging": False,  # tomesd patches a UNet's transformer blocks
    "variation_seeds": False,  # their pipelines draw their own latents (packed tokens on FLUX)
}


# diffusers' caches their transformers' CacheMixin runs, as sdapi.engines.speedups names them.
FLUX_CACHES = ("first_block", "taylorseer")
# ...which need the pipeline to set a cache context: only their text-to-image pipelines do (diffusers 0.38).
FLUX_CACHE_FIELDS = {"step_caches": FLUX_CACHES, "step_cache_edits": False}


def transformer_family(**own: Any) -> Family:
    """A diffusion-transformer family: what they all share, then its own fields (which win)."""
    return Family(**(_SHARED | own))


def one_unit_controlnet(model_class: str, pipeline: str, **options: Any) -> ControlNetSupport:
    """ControlNet on a transformer family's diffusers pipeline: one unit, text-to-image, balanced mode."""
    return ControlNetSupport(
        model_class=model_class, pipeline=pipeline, max_units=1, edits=False, modes=False, **options
    )
