"""A model source told apart: a folder, a single file, a hub id."""

from __future__ import annotations


def test_model_sources_are_told_apart(tmp_path):
    from sdapi.core.model_sources import describe_source

    (tmp_path / "folder").mkdir()
    assert describe_source(str(tmp_path / "folder")) == "folder"
    assert describe_source(str(tmp_path / "model.safetensors")) == "single-file"
    assert describe_source(str(tmp_path / "model.CKPT")) == "single-file"
    assert describe_source("runwayml/stable-diffusion-v1-5") == "hub"
