"""Model families detected from disk, and a model of a kind not served refused at start-up."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from sdapi.families import FLUX, FLUX2_KLEIN, SD1, SD2, SD3, SDXL, Z_IMAGE
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
    other = tmp_path / "hunyuan"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "HunyuanDiTPipeline"}))
    with pytest.raises(UnsupportedModel, match=r"HunyuanDiTPipeline.*SDXL base.*FLUX\.1"):
        detect_family(str(other))


def test_the_transformer_families_from_their_folders(tiny_transformer_models):
    expected = {
        "sd3": (SD3, "cfg"),
        "flux": (FLUX, "distilled"),  # [schnell]: no guidance embedding
        "flux-dev": (FLUX, "embedded"),
        "flux-fill": (FLUX, "embedded"),
        "flux2-klein": (FLUX2_KLEIN, "distilled"),  # model_index.json's is_distilled
        "z-image": (Z_IMAGE, "distilled"),  # taken for Turbo unless the config says cfg
    }
    for variant, (family, guidance) in expected.items():
        detected = detect_family(str(tiny_transformer_models[variant]))
        assert (detected.family, detected.guidance, detected.native_size) == (family, guidance, (1024, 1024))
        assert detected.inpainting == (variant == "flux-fill")  # FLUX.1 Fill: the inpainting checkpoint


@pytest.mark.parametrize(
    ("keys", "family", "guidance"),
    [
        (["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"], SD3, "cfg"),
        (["double_blocks.0.img_attn.qkv.weight", "guidance_in.in_layer.weight"], FLUX, "embedded"),
        (["model.diffusion_model.double_blocks.0.img_attn.qkv.weight"], FLUX, "distilled"),
    ],
)
def test_transformer_single_files_by_their_tensor_names(tmp_path, keys, family, guidance):
    path = tmp_path / "model.safetensors"
    save_file({key: torch.zeros(1) for key in keys}, str(path))
    detected = detect_family(str(path))
    assert (detected.family, detected.guidance) == (family, guidance)


def test_a_single_file_of_an_unknown_layout_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"layers.0.attention.to_q.weight": torch.zeros(1)}, str(path))
    with pytest.raises(UnsupportedModel, match="diffusers 目录"):
        detect_family(str(path))


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
