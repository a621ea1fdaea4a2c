"""Model families detected from disk, and a model of a kind not served refused at start-up."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sdapi.families import SD1, SD2, SDXL
from sdapi.families.detection import UnsupportedModel, detect_family
from tests.support.services import (
    REPO_ROOT,
    free_port,
    write_config,
)


def test_detection(tiny_model, tiny_sd2v, tiny_sdxl, tmp_path):
    assert detect_family(str(tiny_model)).family is SD1
    sd2 = detect_family(str(tiny_sd2v))
    assert sd2.family is SD2 and sd2.prediction == "v_prediction" and sd2.native_size == (768, 768)
    sdxl = detect_family(str(tiny_sdxl))
    assert sdxl.family is SDXL and sdxl.native_size == (1024, 1024)
    flux = tmp_path / "flux"
    flux.mkdir()
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(UnsupportedModel, match=r"FluxPipeline.*SDXL base"):
        detect_family(str(flux))


def test_an_unsupported_model_is_refused_at_start_up(tmp_path):
    odd = tmp_path / "odd-unet"
    (odd / "unet").mkdir(parents=True)
    (odd / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (odd / "unet" / "config.json").write_text(json.dumps({"in_channels": 8}))  # neither 4 nor inpainting's 9
    config = write_config(tmp_path / "svc", odd)
    refused = subprocess.run(
        [sys.executable, "-m", "sdapi", "serve", "--config", str(config), "--port", str(free_port())],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2
    assert "不支持的模型：UNet 输入 8 通道" in refused.stderr and "SDXL base" in refused.stderr
