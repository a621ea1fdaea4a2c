"""What the diffusion-transformer families (SD 3.x, FLUX.1, FLUX.2 [klein], Z-Image) share: flow matching, whose
schedulers differ from the UNet families', and LoRAs that change the transformer alone, named by diffusers' module
paths under kohya's style of prefix."""

from __future__ import annotations

from sdapi.core.schedulers import FLOW_OPTIONS, FLOW_SCHEDULERS

# The schedulers a flow-matching model runs: flow-match Euler (its own), and the multistep solvers diffusers runs
# on flow sigmas (sdapi.core.schedulers says how each is built on a flow model).
FLOW_MATCH_SCHEDULERS: tuple[str, ...] = FLOW_SCHEDULERS
# LoRAs change the transformer; the text encoders (T5, Qwen3) stay as they are.
TRANSFORMER_LORA_PREFIXES = {"transformer": "lora_transformer_"}
# Every transformer family is served at 1024 pixels, its sides multiples of 16 (the VAE's 8 times a 2x2 patch).
TRANSFORMER_SIDE = 1024
TRANSFORMER_SIDE_MULTIPLE = 16
# The solvers that run on flow sigmas serve text-to-image alone (Family.text_to_image_only_schedulers).
FLOW_SOLVERS: tuple[str, ...] = tuple(FLOW_OPTIONS)
