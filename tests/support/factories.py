"""Plain GenerationParams for engine-level tests and benchmarks (imports nothing but sdapi.core.params)."""

from __future__ import annotations

from typing import Any

from sdapi.core.params import GenerationParams


def make_params(**changes: Any) -> GenerationParams:
    """Text-to-image GenerationParams with plain defaults (512x512, 20 steps, seed 1), for engine-level code."""
    fields: dict[str, Any] = {
        "prompt": "a lighthouse at dusk",
        "negative_prompt": None,
        "width": 512,
        "height": 512,
        "num_images": 1,
        "num_inference_steps": 20,
        "guidance_scale": 7.5,
        "strength": None,
        "scheduler": None,
        "seed": 1,
        "output_format": "png",
    }
    fields.update(changes)
    return GenerationParams(**fields)
