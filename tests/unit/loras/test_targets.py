"""LoRA targets read from a model's files are those of the loaded model."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("family", ["sd15", "sd2-v", "sdxl"])
def test_lora_targets_read_from_disk_are_those_of_the_loaded_model(tmp_path, family):
    """An API node decides LoRA fits from the model's files; a worker from the loaded modules: the same names and
    shapes for every family."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from sdapi.families import family_of_pipeline
    from sdapi.families.tiny import make_tiny_model
    from sdapi.loras.merging import adapter_targets, target_shapes
    from sdapi.loras.targets import disk_targets

    folder = make_tiny_model(tmp_path / family, family=family)
    pipeline_class = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    pipeline = pipeline_class.from_pretrained(folder)
    detected = family_of_pipeline(pipeline).family
    loaded = target_shapes(adapter_targets(detected, detected.adapter_modules(pipeline)))
    assert disk_targets(folder) == loaded
