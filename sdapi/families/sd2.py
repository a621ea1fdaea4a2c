"""Stable Diffusion 2.x: one OpenCLIP-H text encoder (1024 wide) and linear attention projections; the 768-pixel
models predict v (their scheduler config says so), the 512-pixel base and inpainting ones epsilon. Its pipelines and
LoRA layout are SD 1.x's."""

from __future__ import annotations

import dataclasses

from sdapi.families.sd1 import SD1

SD2 = dataclasses.replace(SD1, name="sd2", label="SD 2.x", native_side=768, embedding_widths=(1024,))
